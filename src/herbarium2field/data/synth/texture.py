"""Cheap noise and photometric operations: paper mottling, lighting, colour casts, sensor grain.

Speed matters here (hundreds of images per second on one core), so full-resolution work is done with
PIL's uint8 operations (a colour matrix, a multiply, an add) and every smooth field is computed at low
resolution in numpy and upsampled once. Fine grain is cut from one cached tile drawn from a fixed seed,
so images stay deterministic without paying for new noise.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops

_GRAIN_SEED = 20200  # fixed: the tile is part of the renderer, not of a dataset
_GRAIN_SIGMA = 6.0  # grey levels of the cached tile; images blend it down to their own amplitude
FIELD_SCALE = 4  # smooth fields are computed at 1/4 of the image resolution


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: float) -> np.ndarray:
    """Value noise in about [-1, 1] with features ``1/cells`` of the short side, as float32 ``(h, w)``."""
    short = min(height, width)
    gh = max(2, int(round(cells * height / short)) + 1)
    gw = max(2, int(round(cells * width / short)) + 1)
    low = Image.fromarray(rng.uniform(-1, 1, (gh, gw)).astype(np.float32))
    return np.asarray(low.resize((width, height), Image.BILINEAR), dtype=np.float32)


def field_shape(image: Image.Image) -> tuple[int, int]:
    """``(h, w)`` of the low-resolution grid on which smooth fields for ``image`` are computed."""
    return max(2, image.height // FIELD_SCALE), max(2, image.width // FIELD_SCALE)


def vignette(height: int, width: int, strength: float) -> np.ndarray:
    """Multiplicative darkening towards the corners: 1 in the centre, ``1 - strength`` in the corners."""
    y = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    x = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    return 1.0 - strength * np.clip((x * x + y * y) * 2.0, 0, 1)


def multiply(image: Image.Image, gain: np.ndarray) -> Image.Image:
    """Multiply an RGB image by a smooth low-resolution gain field ``(h, w)`` or ``(h, w, 3)`` in [0, 1]."""
    g = np.clip(gain * 255.0 + 0.5, 0, 255).astype(np.uint8)
    field = Image.fromarray(g).resize(image.size, Image.BILINEAR)
    if field.mode != "RGB":
        field = field.convert("RGB")
    return ImageChops.multiply(image, field)


def colour_matrix(image: Image.Image, matrix: np.ndarray, offset: float = 0.0) -> Image.Image:
    """``out = matrix @ rgb + offset`` per pixel, clipped to uint8, in one PIL pass."""
    m = np.concatenate([np.asarray(matrix, dtype=np.float64), np.full((3, 1), offset)], axis=1)
    return image.convert("RGB", tuple(float(v) for v in m.ravel()))


@lru_cache(maxsize=4)
def _grain_tile(side: int) -> Image.Image:
    noise = np.random.default_rng(_GRAIN_SEED).standard_normal((side, side)) * _GRAIN_SIGMA + 128.0
    return Image.fromarray(np.clip(noise + 0.5, 0, 255).astype(np.uint8)).convert("RGB")


def add_grain(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """Add grey per-pixel Gaussian noise of ``sigma`` grey levels (luminance grain, as scanners and sensors)."""
    side = 1 << int(np.ceil(np.log2(max(image.size) * 2)))
    x, y = int(rng.integers(0, side - image.width)), int(rng.integers(0, side - image.height))
    tile = _grain_tile(side).crop((x, y, x + image.width, y + image.height))
    grey = Image.new("RGB", image.size, (128, 128, 128))
    noise = Image.blend(grey, tile, min(1.0, sigma / _GRAIN_SIGMA))
    return ImageChops.add(image, noise, scale=1.0, offset=-128)
