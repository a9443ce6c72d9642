"""Image transforms: one training pipeline per domain, and timm's evaluation pipeline.

Herbarium sheets and field photos get different augmentations because they differ differently: sheets
are flat, upright-agnostic scans (vertical flips and 90° turns are harmless) whose colours are faded;
photos are upright scenes under varied light. Normalisation and size come from the backbone's
pretrained_cfg, recorded in :class:`Preprocessing`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageStat
from timm.data import create_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T

from herbarium2field.config import AugmentConfig
from herbarium2field.data.appearance import appearance_transfer_steps


@dataclass
class Preprocessing:
    """What a model expects of its input; stored in the model card so every later command agrees."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    grey: bool = False  # colour-invariant input: every image (sheet or photo) is seen in greyscale

    def to_dict(self) -> dict[str, Any]:
        d = {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
             "interpolation": self.interpolation, "crop_pct": self.crop_pct}
        return {**d, "grey": True} if self.grey else d  # absent when off: older records stay equal

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(int(d["input_size"]), tuple(d["mean"]), tuple(d["std"]),  # type: ignore[arg-type]
                   d.get("interpolation", "bicubic"), float(d.get("crop_pct", 0.875)), bool(d.get("grey", False)))


Transform = Callable[[Image.Image], torch.Tensor]


class RandomRotate90:
    """Rotate by a random multiple of 90° with probability ``p`` (albumentations' RandomRotate90)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.transpose(random.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                            Image.Transpose.ROTATE_270]))

    def __repr__(self) -> str:
        return f"RandomRotate90(p={self.p})"


class ToNormalizedTensor:
    """``T.ToTensor()`` then ``T.Normalize(mean, std)`` as one table look-up per value, giving bit for bit
    the same floats ~2x faster: an 8-bit channel value has only 256 possible results, computed once by
    those two transforms themselves. Images other than 8-bit RGB go through the two transforms."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self._pair = T.Compose([T.ToTensor(), T.Normalize(self.mean, self.std)])
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
        self._lut = self._pair(Image.fromarray(ramp, "RGB"))[:, 0, :].numpy().copy()  # (3, 256) float32

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if not isinstance(img, Image.Image) or img.mode != "RGB":
            return self._pair(img)
        a = np.asarray(img)
        out = np.empty((3, *a.shape[:2]), np.float32)
        for c in range(3):
            np.take(self._lut[c], a[..., c], out=out[c])
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


_LUMA = np.array([0.299, 0.587, 0.114])  # PIL's "L" weights: grey, saturation and contrast blends
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)


def color_twist(img: Image.Image, brightness: float, contrast: float, saturation: float, hue: float,
                grey: bool = False) -> Image.Image:
    """Brightness, contrast and saturation factors (1 = unchanged) and a hue shift in turns, as one affine
    colour map ``x' = c·b·H·S·x + (1 - c)·b·m`` that PIL applies in one pass (``convert`` with a matrix).
    ``S = s·I + (1 - s)·1·lumaᵀ`` blends with the grey image (as PIL's ImageEnhance.Color), ``H`` rotates hue
    in YIQ space (both keep grey grey; the direction of torchvision's HSV shift) and ``m`` is the mean grey
    level that contrast blends towards (as ImageEnhance.Contrast). ``grey`` then takes the luma of the result
    (as ``RandomGrayscale``): one more matrix, no second pass."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    theta = -hue * 2 * np.pi
    rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    sat = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), _LUMA)
    m = contrast * brightness * (_YIQ_INV @ rot @ _YIQ) @ sat
    if grey:
        m = np.outer(np.ones(3), _LUMA) @ m  # the offset is grey already: luma · 1 = 1
    offset = (1 - contrast) * brightness * float(np.asarray(ImageStat.Stat(img).mean) @ _LUMA)
    return img.convert("RGB", tuple(np.hstack([m, np.full((3, 1), offset)]).ravel().tolist()))


class ColorTwist:
    """Colour jitter as ONE affine colour map per image (NVIDIA DALI's ``ColorTwist``, see
    :func:`color_twist`): the ranges of ``T.ColorJitter(brightness, contrast, saturation, hue)``, applied in a
    fixed order (brightness, contrast, saturation, hue) without clipping in between, hue rotated in YIQ
    space instead of HSV. Why: torchvision's PIL hue step converts to HSV and back, 3.7 of the 8.3 CPU ms a
    training item cost (docs/performance.md); the fused map, random grey included, costs 0.9 ms, and the
    loader is what keeps a GPU fed. Draws come from torch's generator, which the training dataset seeds per item."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float,
                 grayscale: float = 0.0) -> None:
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.grayscale = grayscale  # probability of a grey result (RandomGrayscale folded into the matrix)

    def draw(self) -> tuple[float, float, float, float, bool]:
        """``(brightness, contrast, saturation, hue, grey)``: the factors uniform in ColorJitter's ranges, grey
        with probability ``grayscale``."""
        u = torch.rand(5, dtype=torch.float64).tolist()
        b, c, s = (max(0.0, 1 - j) + u[k] * (1 + j - max(0.0, 1 - j))
                   for k, j in enumerate((self.brightness, self.contrast, self.saturation)))
        return b, c, s, (2 * u[3] - 1) * self.hue, u[4] < self.grayscale

    def __call__(self, img: Image.Image) -> Image.Image:
        return color_twist(img, *self.draw())

    def __repr__(self) -> str:
        return (f"ColorTwist(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue}, grayscale={self.grayscale})")


def train_transform(aug: AugmentConfig, pre: Preprocessing, *, domain: str,
                    field_pool: list[str] | None = None, loader: Callable[[str], Image.Image] | None = None) -> Transform:
    """Training pipeline for one domain (``herbarium`` or ``field``).

    ``field_pool``/``loader`` give herbarium→field appearance transfer (FDA, background swap) access to
    real field photos; they are unused for the field domain.
    """
    steps: list[Callable] = []
    if domain == "herbarium":
        steps += appearance_transfer_steps(aug, field_pool=field_pool, loader=loader)
    if pre.grey:
        steps.append(T.Grayscale(num_output_channels=3))
    steps.append(RandomResizedCropAndInterpolation(pre.input_size, scale=aug.scale, ratio=aug.ratio,
                                                   interpolation=pre.interpolation))
    if aug.hflip:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        steps.append(T.RandomVerticalFlip(aug.vflip))
    if aug.rotate90:
        steps.append(RandomRotate90(aug.rotate90))
    j, hue = aug.color_jitter, min(0.5, aug.color_jitter / 4)
    if j and aug.jitter_op == "twist":  # jitter and random grey in one colour matrix
        steps.append(ColorTwist(j, j, j, hue, grayscale=aug.grayscale))
    else:
        if j:
            steps.append(T.ColorJitter(j, j, j, hue))
        if aug.grayscale:
            steps.append(T.RandomGrayscale(aug.grayscale))
    if aug.blur:
        steps.append(T.RandomApply([T.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=aug.blur))
    steps.append(ToNormalizedTensor(pre.mean, pre.std))
    if aug.random_erasing:
        steps.append(RandomErasing(aug.random_erasing, mode="pixel", device="cpu"))
    return T.Compose(steps)


def eval_transform(pre: Preprocessing, *, crop_pct: float | None = None) -> Transform:
    """timm's evaluation pipeline: resize to size/crop_pct, centre crop, normalise (greyscale first, when the
    model was trained colour-invariant)."""
    base = create_transform(input_size=pre.input_size, is_training=False, interpolation=pre.interpolation,
                            mean=pre.mean, std=pre.std, crop_pct=crop_pct or pre.crop_pct)
    return T.Compose([T.Grayscale(num_output_channels=3), base]) if pre.grey else base


def tta_transforms(pre: Preprocessing, kind: str) -> list[Transform]:
    """Test-time augmentation views: ``flip`` (centre + mirrored) or ``multicrop`` (full, centre, flips)."""
    base = eval_transform(pre)
    flipped = T.Compose([T.RandomHorizontalFlip(1.0), base])
    if kind == "flip":
        return [base, flipped]
    if kind == "multicrop":
        full = eval_transform(pre, crop_pct=1.0)
        return [base, flipped, full, T.Compose([T.RandomHorizontalFlip(1.0), full])]
    raise ValueError(f"unknown TTA {kind!r}; use flip or multicrop")
