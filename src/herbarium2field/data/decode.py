"""Decode and augment as tensors: ``torchvision.io.decode_jpeg`` (libjpeg-turbo on the CPU, nvJPEG on a
GPU, a whole batch per call) and the training augmentations as batched tensor operations, on any device.

The default training path stays PIL (:mod:`.transforms`: bit-for-bit reproducible, every format, EXIF,
CMYK, appearance transfer). This one is for machines where the CPU cannot feed the GPU: the loader
workers only read file bytes, and the main process decodes and augments the batch on the GPU
(``H2FDataModule(..., decode="gpu")``). The augmentations are the same kinds with the same parameter
ranges, drawn per item from the sampler's seed (so an exact resume stays exact), but the pixels are not
those of the PIL path: interpolation, colour arithmetic and the order of the colour jitter differ
slightly. On a CPU the tensor augmentation is several times slower than PIL's (float32 arithmetic on
one core against PIL's 8-bit loops): there it is only a dry run of the GPU path.

Files libjpeg-turbo/nvJPEG cannot decode as they are (not a JPEG, CMYK, EXIF-rotated, truncated) go
through :func:`~.images.load_rgb_bytes` (PIL), so every image the PIL path reads is read here too. The
prepared cache (``h2f prepare``) holds upright RGB JPEGs at 320 px: the ideal input.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from herbarium2field.config import AugmentConfig
from herbarium2field.data.images import ImageError, load_rgb_bytes
from herbarium2field.data.transforms import Preprocessing

__all__ = ["DECODERS", "TensorAugment", "decode_batch", "read_bytes", "tensor_path_supports"]

#: What ``H2FDataModule(decode=...)`` accepts.
DECODERS = ("pil", "gpu")

_EXIF_APP1 = b"Exif\x00\x00"


def read_bytes(path: str | Path) -> Tensor:
    """The file's bytes as a 1-D uint8 tensor (what ``decode_jpeg`` takes); :class:`ImageError` if unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
    if not data:
        raise ImageError("the file is empty (0 bytes)", path=path)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _turbo_ok(data: Tensor) -> bool:
    """A JPEG that decode_jpeg reads as the PIL path would: a 1- or 3-component JPEG (not CMYK/YCCK, which
    PIL converts its own way) without an EXIF block (whose orientation PIL applies). Corrupt files are
    caught when decoding fails."""
    head = data[:65536].numpy().tobytes()
    if not head.startswith(b"\xff\xd8") or _EXIF_APP1 in head:
        return False
    pos = 2
    while pos + 4 <= len(head):  # walk the marker segments up to the frame header
        if head[pos] != 0xFF:
            return False
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(head[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: components at offset 9
            return pos + 9 < len(head) and head[pos + 9] in (1, 3)
        pos += 2 + length
    return False


def _pil_decode(data: Tensor, name: str) -> Tensor:
    img = load_rgb_bytes(data.numpy().tobytes(), name)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def decode_batch(datas: Sequence[Tensor], *, device: str | torch.device = "cpu",
                 names: Sequence[str] | None = None, errors: str = "raise") -> list[Tensor]:
    """Decode file bytes to uint8 RGB ``(3, H, W)`` tensors on ``device``: JPEGs with one batched
    ``decode_jpeg`` call (nvJPEG when ``device`` is a GPU), anything else, or a JPEG that fails there, with PIL.
    An image neither can decode raises :class:`ImageError` (naming the file), or with ``errors="none"``
    comes back as ``None``."""
    device = torch.device(device)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(datas))]
    out: list[Tensor | None] = [None] * len(datas)
    turbo = [i for i, d in enumerate(datas) if _turbo_ok(d)]
    if turbo:
        try:
            decoded = decode_jpeg([datas[i] for i in turbo], mode=ImageReadMode.RGB, device=device)
            for i, x in zip(turbo, decoded, strict=True):
                out[i] = x
        except RuntimeError:  # one bad file fails the whole call: decode them one by one
            for i in turbo:
                with contextlib.suppress(RuntimeError):
                    out[i] = decode_jpeg(datas[i], mode=ImageReadMode.RGB, device=device)
    for i, x in enumerate(out):
        if x is None:
            try:
                out[i] = _pil_decode(datas[i], names[i]).to(device)
            except ImageError:
                if errors == "raise":
                    raise
    return out  # type: ignore[return-value]


def tensor_path_supports(aug: AugmentConfig, pre: Preprocessing) -> str | None:
    """``None`` when :class:`TensorAugment` implements everything ``aug`` asks for, else the reason."""
    if aug.label_erase or aug.green_shift or aug.background_swap or aug.fda:
        return "herbarium appearance transfer is implemented on PIL images only"
    if aug.blur or aug.random_erasing:
        return "blur and random erasing are implemented on PIL images only"
    if getattr(pre, "grey", False):
        return "greyscale input is implemented on PIL images only"
    return None


_INTERP = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


class TensorAugment:
    """The training augmentations of :func:`~.transforms.train_transform` on uint8 ``(3, H, W)`` tensors:
    RandomResizedCrop (timm's parameter draw), flips, 90° turns, colour jitter (brightness, contrast,
    saturation, hue), random greyscale, normalisation. Parameters are drawn per image from its own seed;
    the pixel work is batched (one crop-resize per image, the rest on the whole batch) on the images' device.
    """

    def __init__(self, aug: AugmentConfig, pre: Preprocessing) -> None:
        reason = tensor_path_supports(aug, pre)
        if reason:
            raise ValueError(f"the tensor augmentation path cannot do this recipe: {reason}")
        self.aug, self.size = aug, int(pre.input_size)
        self.mode = _INTERP.get(pre.interpolation, "bilinear")
        self.mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)

    # ---- parameters (CPU, per image) -----------------------------------------------------------------

    def _crop(self, g: torch.Generator, h: int, w: int) -> tuple[int, int, int, int]:
        """timm's RandomResizedCrop draw (10 tries, then a centre crop within the ratio range)."""
        area = h * w
        lo, hi = self.aug.scale
        log_r = (math.log(self.aug.ratio[0]), math.log(self.aug.ratio[1]))
        for _ in range(10):
            target = area * _uniform(g, lo, hi)
            ratio = math.exp(_uniform(g, *log_r))
            cw = int(round(math.sqrt(target * ratio)))
            ch = int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                i = int(torch.randint(0, h - ch + 1, (1,), generator=g))
                j = int(torch.randint(0, w - cw + 1, (1,), generator=g))
                return i, j, ch, cw
        in_ratio = w / h
        if in_ratio < min(self.aug.ratio):
            cw, ch = w, int(round(w / min(self.aug.ratio)))
        elif in_ratio > max(self.aug.ratio):
            ch, cw = h, int(round(h * max(self.aug.ratio)))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def params(self, seed: int, h: int, w: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(int(seed))
        a = self.aug
        j = a.color_jitter
        return {
            "crop": self._crop(g, h, w),
            "hflip": bool(a.hflip and _uniform(g, 0, 1) < a.hflip),
            "vflip": bool(a.vflip and _uniform(g, 0, 1) < a.vflip),
            "rot90": int(torch.randint(1, 4, (1,), generator=g)) if a.rotate90 and _uniform(g, 0, 1) < a.rotate90 else 0,
            "jitter": (_uniform(g, 1 - j, 1 + j), _uniform(g, 1 - j, 1 + j), _uniform(g, 1 - j, 1 + j),
                       _uniform(g, -min(0.5, j / 4), min(0.5, j / 4))) if j else None,
            "grey": bool(a.grayscale and _uniform(g, 0, 1) < a.grayscale),
        }

    # ---- pixels (batched, any device) ---------------------------------------------------------------

    def __call__(self, images: Sequence[Tensor], seeds: Sequence[int]) -> Tensor:
        """A normalised float batch ``(B, 3, size, size)`` on the images' device."""
        ps = [self.params(s, int(x.shape[-2]), int(x.shape[-1])) for x, s in zip(images, seeds, strict=True)]
        s = self.size
        crops = []
        for x, p in zip(images, ps, strict=True):
            i, j, ch, cw = p["crop"]
            c = x[None, :, i:i + ch, j:j + cw].float()
            crops.append(TF.interpolate(c, size=(s, s), mode=self.mode, antialias=self.mode != "nearest",
                                        **({} if self.mode == "nearest" else {"align_corners": False})))
        x = torch.cat(crops).clamp_(0, 255).div_(255)
        dev = x.device
        flag = lambda key: torch.tensor([bool(p[key]) for p in ps], device=dev).view(-1, 1, 1, 1)  # noqa: E731
        if self.aug.hflip:
            x = torch.where(flag("hflip"), x.flip(-1), x)
        if self.aug.vflip:
            x = torch.where(flag("vflip"), x.flip(-2), x)
        if self.aug.rotate90:
            for k in (1, 2, 3):
                sel = [n for n, p in enumerate(ps) if p["rot90"] == k]
                if sel:
                    x[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
        if self.aug.color_jitter:
            f = torch.tensor([p["jitter"] for p in ps], device=dev, dtype=torch.float32)
            x = _jitter(x, f[:, 0], f[:, 1], f[:, 2], f[:, 3])
        if self.aug.grayscale:
            x = torch.where(flag("grey"), _grey(x).expand_as(x), x)
        return (x - self.mean.to(dev)) / self.std.to(dev)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _grey(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _jitter(x: Tensor, b: Tensor, c: Tensor, s: Tensor, h: Tensor) -> Tensor:
    """Brightness, contrast, saturation (blends, as PIL's ImageEnhance) and a hue rotation, per image."""
    v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    x = (x * v(b)).clamp_(0, 1)
    mean = _grey(x).mean(dim=(-3, -2, -1), keepdim=True)
    x = (mean + v(c) * (x - mean)).clamp_(0, 1)
    g = _grey(x)
    x = (g + v(s) * (x - g)).clamp_(0, 1)
    return _shift_hue(x, h)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` turns (per image), via HSV."""
    r, g, b = x.unbind(1)
    mx, _ = x.max(1)
    mn, _ = x.min(1)
    d = mx - mn
    safe = torch.where(d > 0, d, torch.ones_like(d))
    hr = ((g - b) / safe) % 6
    hg = (b - r) / safe + 2
    hb = (r - g) / safe + 4
    hue = torch.where(mx == r, hr, torch.where(mx == g, hg, hb)) / 6
    hue = torch.where(d > 0, hue, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    sat = torch.where(mx > 0, d / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    k = lambda n: (n + hue * 6) % 6  # noqa: E731
    f = lambda n: mx - mx * sat * (torch.minimum(k(n), 4 - k(n)).clamp(0, 1))  # noqa: E731
    return torch.stack([f(5), f(3), f(1)], 1)
