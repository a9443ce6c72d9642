"""A torch ``Dataset`` over rows of the manifest table, with per-domain transforms."""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from herbarium2field.data.cache import ImageSource
from herbarium2field.data.decode import read_bytes
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
            with seeded(item[1]):
                return self._item(item[0])
        return self._item(item)

    def _item(self, i: int) -> tuple[torch.Tensor, int, int, int]:
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


class EncodedTableDataset(ImageTableDataset):
    """Training items as the file's undecoded bytes: ``(uint8 bytes, label, domain code, row index, seed)``,
    for decoding a whole batch on the GPU (:func:`collate_encoded`, then
    :meth:`~.datamodule.H2FDataModule.on_before_batch_transfer`). The workers only read files. A file that
    cannot be read is replaced by the next one of its class, as in :class:`ImageTableDataset`; one whose
    bytes do not decode is replaced at decode time."""

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, int, int]:  # type: ignore[override]
        i, seed = item if isinstance(item, tuple) else (item, item)
        for attempt in range(len(self.paths)):
            j = i if attempt == 0 else self._substitute(i, attempt)
            try:
                data = read_bytes(self.source.file_for(self.paths[j]))
            except ImageError as exc:
                warnings.warn(f"skipping unreadable image: {exc}", stacklevel=2)
                continue
            return data, int(self.labels[i]), int(self.domains[i]), i, seed
        raise ImageError("no readable image in this dataset", path=self.source.root)


def collate_encoded(items: list[tuple[torch.Tensor, int, int, int, int]]) -> dict[str, Any]:
    """A batch of undecoded images (a dict, so that it survives pinning and Lightning's batch handling)."""
    data, labels, domains, rows, seeds = zip(*items, strict=True)
    return {"encoded": list(data), "labels": torch.tensor(labels), "domains": torch.tensor(domains),
            "rows": torch.tensor(rows), "seeds": list(seeds)}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed ``random``, NumPy and torch's CPU generator (what transforms draw from) for one item. In the
    main process (``num_workers=0``) their previous states are put back afterwards, so loading data does
    not move the training process's own random streams.

    Only the CPU generator is seeded (``torch.default_generator``, the stream ``torch.manual_seed`` seeds
    on the CPU, so the draws are the same): ``torch.manual_seed`` also visits every accelerator backend,
    which cost ~1 ms per item (more than a 320 px JPEG decode), and in the main process it re-seeded the
    training process's CUDA generator without putting it back."""
    main = get_worker_info() is None
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if main else None
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
