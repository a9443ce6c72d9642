"""A torch ``Dataset`` over rows of the manifest table, with per-domain transforms."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from herbarium2field.data.cache import ImageSource
from herbarium2field.errors import ImageError

DOMAIN_CODES = {"herbarium": 0, "field": 1}


class ImageTableDataset(Dataset):
    """Items are ``(image tensor, label, domain code, row index)``; label -1 means unknown/unlabelled.

    In training (``substitute=True``) an image that fails to decode is replaced by the next image of the
    same class (with a warning naming the file) rather than killing a long run; ``h2f validate`` finds such
    files up front. For inference (``substitute=False``) nothing is swapped: the item comes back as a blank
    tensor with row index ``-(i + 1)``, so the caller can name the file instead of scoring another image.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], domains: Sequence[int], source: ImageSource,
                 transforms: dict[int, Callable[[Image.Image], torch.Tensor]] | Callable[[Image.Image], torch.Tensor]
                 , *, substitute: bool = True) -> None:
        self.substitute = substitute
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.domains = np.asarray(domains, dtype=np.int64)
        self.source = source
        self.transforms = transforms if isinstance(transforms, dict) else {0: transforms, 1: transforms}

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Image.Image:
        for attempt in range(len(self.paths)):
            j = i if attempt == 0 else self._substitute(i, attempt)
            try:
                return self.source.load(self.paths[j])
            except ImageError as exc:
                warnings.warn(f"skipping unreadable image: {exc}", stacklevel=2)
        raise ImageError("no readable image in this dataset", path=self.source.root)

    def _substitute(self, i: int, attempt: int) -> int:
        same = np.flatnonzero(self.labels == self.labels[i])
        pos = int(np.searchsorted(same, i))
        return int(same[(pos + attempt) % len(same)]) if attempt < len(same) else (i + attempt) % len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, int]:
        """``item`` is an index, or ``(index, seed)`` from the training sampler: the seed fixes this item's
        random augmentation, so it does not depend on which worker process draws it or on earlier epochs."""
        if isinstance(item, tuple):
            i, seed = item
            random.seed(seed)
            torch.manual_seed(seed)
        else:
            i = item
        if not self.substitute:
            try:
                img = self.source.load(self.paths[i])
            except ImageError:
                blank = self.transforms[int(self.domains[i])](Image.new("RGB", (8, 8)))
                return torch.zeros_like(blank), int(self.labels[i]), int(self.domains[i]), -(i + 1)
            return self.transforms[int(self.domains[i])](img), int(self.labels[i]), int(self.domains[i]), i
        img = self.load(i)
        x = self.transforms[int(self.domains[i])](img)
        return x, int(self.labels[i]), int(self.domains[i]), i
