"""Views of a herbarium sheet for matching field photos of species that have none in training (the
herbarium-only branch, :mod:`herbarium2field.scoring.reserve`).

Measured on real photos (leave-species-out on the shared sample, frozen ImageNet features): a field photo
looks more like its species' sheet once colour is gone (dried tissue is brown, living tissue green) and the
labels, barcodes and colour charts are painted over; and a photo shows an organ or a branch, so the sheet is
matched as a whole *and* as large overlapping squares ("halves"), keeping the best match. Finer tiles and
colour tiles did worse there.

``SheetViews(colour, erase, views, background)``:

- ``colour``: ``grey`` (luminance, replicated to three channels) or ``rgb``;
- ``erase``: paint labels and marks in the paper colour first (:func:`~.appearance.erase_marks`);
- ``background``: ``plain`` pastes the specimen on a constant vegetation-like colour (``none``: keep paper);
- ``views``: ``whole`` (the sheet squashed to a square) or ``halves`` (that, plus squares of side = the
  sheet's short side at half-side stride: 2-3 per sheet).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from herbarium2field.data.appearance import erase_marks, specimen_mask
from herbarium2field.data.images import load_rgb
from herbarium2field.data.transforms import Preprocessing
from herbarium2field.errors import ConfigError, ImageError

#: Short side sheets are decoded to before their views are cut (each view is then resized to the model's size).
SHEET_SIDE = 672
PLAIN = (100, 105, 80)


@dataclass(frozen=True)
class SheetViews:
    colour: str = "grey"
    erase: bool = True
    views: str = "halves"
    background: str = "none"

    def __post_init__(self) -> None:
        for name, value, allowed in (("colour", self.colour, ("grey", "rgb")), ("views", self.views, ("whole", "halves")),
                                     ("background", self.background, ("none", "plain"))):
            if value not in allowed:
                raise ConfigError(f"inference.branch.{name} must be one of {', '.join(allowed)}, not {value!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def prepare(self, img: Image.Image) -> Image.Image:
        """The sheet as the branch sees it, before cutting views."""
        img = img.convert("RGB")
        if self.erase or self.background == "plain":
            img = erase_marks(img)
        if self.background == "plain":
            mask = Image.fromarray(specimen_mask(img).astype(np.uint8) * 255)
            mask = mask.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(1.0))
            img = Image.composite(img, Image.new("RGB", img.size, PLAIN), mask)
        return to_grey(img) if self.colour == "grey" else img

    def cut(self, img: Image.Image, size: int) -> list[Image.Image]:
        """The views of a prepared sheet, each ``size`` x ``size``."""
        out = [img.resize((size, size), Image.Resampling.BICUBIC)]
        if self.views == "halves":
            out += [t.resize((size, size), Image.Resampling.BICUBIC) for t in _squares(img)]
        return out


def to_grey(img: Image.Image) -> Image.Image:
    return img.convert("L").convert("RGB")


def _squares(img: Image.Image) -> list[Image.Image]:
    """Squares of side = the short side, sliding along the long side at half-side stride (ends included)."""
    w, h = img.size
    side = min(w, h)
    stride = side / 2
    steps = max(1, math.ceil((max(w, h) - side) / stride - 0.05) + 1)
    out = []
    for offset in np.linspace(0, max(w, h) - side, steps).round().astype(int):
        box = (offset, 0, offset + side, side) if w >= h else (0, offset, side, offset + side)
        out.append(img.crop(box))
    return out


class SheetViewDataset(torch.utils.data.Dataset):
    """Every view of every sheet, as normalised tensors ``[V, 3, S, S]`` per sheet (for loader workers: the
    decode and the label erasing, the slow part, run in parallel)."""

    def __init__(self, root: Path, paths: list[str], settings: SheetViews, pre: Preprocessing) -> None:
        self.root, self.paths, self.settings, self.pre = Path(root), list(paths), settings, pre
        self.normalise = T.Compose([T.ToTensor(), T.Normalize(pre.mean, pre.std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            img = load_rgb(self.root / self.paths[i], min_side=SHEET_SIDE)
        except ImageError:
            return torch.zeros(0, 3, self.pre.input_size, self.pre.input_size), i  # no views: left out
        views = self.settings.cut(self.settings.prepare(img), self.pre.input_size)
        return torch.stack([self.normalise(v) for v in views]), i
