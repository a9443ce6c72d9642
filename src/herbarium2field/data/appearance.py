"""Herbarium → field appearance transfer: make training sheets look more like field photos.

Species without field photos are only ever seen as pressed, brown specimens on cream paper; at test time
they appear as green plants in clutter. These augmentations, applied to sheets before cropping, remove
what is specific to the herbarium (paper, labels, colour charts, brown tissue) and add what is specific to
the field (colour, clutter, photographic statistics). Each is a probability in the config
(``data.herbarium_aug``), so its effect can be measured:

- ``label_erase``: paint herbarium marks (label text, barcodes, colour-chart patches) in paper colour.
- ``green_shift``: turn dried brown/olive tissue back towards living green.
- ``background_swap``: cut the specimen from the paper and paste it on a blurred real field photo.
- ``fda``: Fourier domain adaptation (Yang & Soatto, 2020): swap the low-frequency amplitude spectrum
  with a random field photo's, transferring its global colour and illumination.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from herbarium2field.config import AugmentConfig

Loader = Callable[[str], Image.Image]


def _hsv(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("HSV"), dtype=np.float32) / 255.0


def specimen_mask(img: Image.Image) -> np.ndarray:
    """Boolean mask of plant tissue on a sheet: coloured (brown/olive/green) or clearly darker than paper.

    Paper is the bright, weakly saturated mode of the image; the threshold adapts to each sheet.
    """
    hsv = _hsv(img)
    sat, val, hue = hsv[..., 1], hsv[..., 2], hsv[..., 0]
    paper_v = np.percentile(val, 75)
    paper_s = np.percentile(sat, 40)
    plant_hue = (hue > 0.03) & (hue < 0.45)  # orange-brown through yellow to green
    coloured = plant_hue & (sat > paper_s + 0.12)
    dark = val < paper_v - 0.22
    return coloured | (dark & plant_hue)


def erase_marks(img: Image.Image) -> Image.Image:
    """Paint label text, barcodes and colour-chart patches in the sheet's paper colour."""
    arr = np.asarray(img).copy()
    hsv = _hsv(img)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    plant_hue = (hue > 0.03) & (hue < 0.45)
    tissue = (plant_hue & (sat > np.percentile(sat, 40) + 0.12)).astype(np.uint8) * 255
    near_tissue = np.asarray(Image.fromarray(tissue).filter(ImageFilter.MaxFilter(9))) > 0  # dark veins, stems
    text = (sat < 0.18) & (val < np.percentile(val, 75) - 0.3) & ~near_tissue  # grey/black ink
    # Saturated blues, reds, magentas, bright like printed patches: dried tissue can be as red and saturated
    # but is dark (a chart detector without the brightness test erased red-brown leaves).
    chart = (sat > 0.35) & ~plant_hue & (val > 0.55)
    marks = text | chart
    if not marks.any():
        return img
    paper = np.median(arr[~marks & ~specimen_mask(img)].reshape(-1, 3), axis=0) if (~marks).any() else 235
    marks = np.asarray(Image.fromarray(marks.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0
    arr[marks] = paper
    return Image.fromarray(arr)


def green_shift(img: Image.Image, rng: random.Random) -> Image.Image:
    """Rotate the hue of dried tissue (browns, olives) towards green and restore some saturation."""
    hsv = np.asarray(img.convert("HSV")).astype(np.int16)
    mask = specimen_mask(img)
    target = rng.uniform(0.22, 0.32) * 255  # yellow-green to green
    h = hsv[..., 0]
    h[mask] = (0.3 * h[mask] + 0.7 * target).astype(np.int16)
    s = hsv[..., 1]
    s[mask] = np.clip(s[mask] * rng.uniform(1.2, 1.8) + 25, 0, 255).astype(np.int16)
    return Image.fromarray(hsv.clip(0, 255).astype(np.uint8), "HSV").convert("RGB")


def swap_background(img: Image.Image, background: Image.Image, rng: random.Random) -> Image.Image:
    """Paste the specimen (mask dilated, edges softened) onto a blurred crop of a field photo."""
    mask = Image.fromarray(specimen_mask(img).astype(np.uint8) * 255)
    mask = mask.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(1.0))
    bg = _random_crop(background, img.size, rng).filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 6.0)))
    return Image.composite(img, bg, mask)


def fourier_adapt(img: Image.Image, reference: Image.Image, beta: float, rng: random.Random) -> Image.Image:
    """FDA: replace the centre ``beta`` share of the amplitude spectrum with the reference image's."""
    src = np.asarray(img, dtype=np.float32)
    ref = np.asarray(_random_crop(reference, img.size, rng), dtype=np.float32)
    fs = np.fft.fft2(src, axes=(0, 1))
    fr = np.fft.fft2(ref, axes=(0, 1))
    amp, phase = np.abs(fs), np.angle(fs)
    amp_ref = np.abs(fr)
    h, w = src.shape[:2]
    b = max(1, int(min(h, w) * beta))
    amp, amp_ref = np.fft.fftshift(amp, axes=(0, 1)), np.fft.fftshift(amp_ref, axes=(0, 1))
    ch, cw = h // 2, w // 2
    amp[ch - b : ch + b + 1, cw - b : cw + b + 1] = amp_ref[ch - b : ch + b + 1, cw - b : cw + b + 1]
    amp = np.fft.ifftshift(amp, axes=(0, 1))
    out = np.real(np.fft.ifft2(amp * np.exp(1j * phase), axes=(0, 1)))
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _random_crop(img: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A crop of ``img`` with ``size``'s aspect ratio, resized to ``size``."""
    w, h = size
    iw, ih = img.size
    scale = min(iw / w, ih / h)
    cw, ch = int(w * scale), int(h * scale)
    x, y = rng.randint(0, iw - cw), rng.randint(0, ih - ch)
    return img.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)


class AppearanceTransfer:
    """One configured herbarium→field step (picklable, for DataLoader workers)."""

    def __init__(self, aug: AugmentConfig, field_pool: list[str] | None, loader: Loader | None) -> None:
        self.aug, self.field_pool, self.loader = aug, list(field_pool or []), loader

    def _field_photo(self) -> Image.Image | None:
        if not self.field_pool or self.loader is None:
            return None
        return self.loader(random.choice(self.field_pool))

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = random  # seeded per item by the dataset
        a = self.aug
        if a.label_erase and rng.random() < a.label_erase:
            img = erase_marks(img)
        if a.green_shift and rng.random() < a.green_shift:
            img = green_shift(img, rng)  # type: ignore[arg-type]
        if a.background_swap and rng.random() < a.background_swap:
            photo = self._field_photo()
            if photo is not None:
                img = swap_background(img, photo, rng)  # type: ignore[arg-type]
        if a.fda and rng.random() < a.fda:
            photo = self._field_photo()
            if photo is not None:
                img = fourier_adapt(img, photo, a.fda_beta, rng)  # type: ignore[arg-type]
        return img

    def __repr__(self) -> str:
        a = self.aug
        return (f"AppearanceTransfer(label_erase={a.label_erase}, green_shift={a.green_shift}, "
                f"background_swap={a.background_swap}, fda={a.fda}, pool={len(self.field_pool)})")


def appearance_transfer_steps(aug: AugmentConfig, *, field_pool: list[str] | None = None,
                              loader: Loader | None = None) -> list[Callable]:
    """PIL-image steps applied to herbarium sheets before cropping; empty when every switch is off."""
    if not (aug.label_erase or aug.green_shift or aug.background_swap or aug.fda):
        return []
    return [AppearanceTransfer(aug, field_pool, loader)]
