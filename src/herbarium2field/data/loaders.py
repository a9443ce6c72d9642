"""Where pixels come from and how a table of images becomes batches, for training and for inference.

Kept free of Lightning so that inference (evaluation, the gallery, identification, feature extraction)
imports only torch's ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

from herbarium2field.data.cache import DEFAULT_SIZE, ImageSource
from herbarium2field.data.datasets import DOMAIN_CODES, ImageTableDataset
from herbarium2field.data.manifest import Dataset, labels_of


def image_source(ds: Dataset, *, cache: bool = True, size: int | None = None, min_size: int = 0) -> ImageSource:
    """Where pixels come from: the `h2f prepare` cache when present and large enough, else the originals.

    ``min_size`` is the short side the model needs: a cache smaller than that is not used.
    """
    return ImageSource(ds.root, size=max(size or DEFAULT_SIZE, min_size), use_cache=cache)


def loader_options(num_workers: int, *, cuda: bool | None = None) -> dict[str, Any]:
    """DataLoader settings sized to the machine: worker processes kept alive between epochs (start-up is
    seconds per worker with torch imported), pinned memory and a deeper prefetch (4 batches per worker
    instead of 2) when batches go to a GPU, whose steps are short and uneven next to a decode."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    opts: dict[str, Any] = {"num_workers": num_workers, "pin_memory": cuda}
    if num_workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=4 if cuda else 2)
    return opts


def table_dataset(table: pd.DataFrame, source: ImageSource, class_index: dict[str, int],
                  transforms: dict[int, Callable] | Callable, *, substitute: bool = True) -> ImageTableDataset:
    """A torch dataset over the rows of a manifest table (labels in ``class_index`` order, -1 unknown)."""
    domains = table.domain if "domain" in table else pd.Series(["field"] * len(table))
    labels = labels_of(table, class_index) if "class_id" in table else [-1] * len(table)
    return ImageTableDataset(
        table.path.tolist(), labels,
        [DOMAIN_CODES[str(d)] for d in domains], source, transforms, substitute=substitute)


def eval_loader(table: pd.DataFrame, source: ImageSource, class_index: dict[str, int],
                transform: Callable[..., torch.Tensor], *, batch_size: int = 64, num_workers: int = 2,
                batches: list[list[int]] | None = None) -> DataLoader:
    """An ordered loader over any table (test set, gallery, validation) for inference; unreadable images
    come back flagged (negative row index), never replaced by another image. ``batches`` (lists of row
    positions) fixes the batches exactly, e.g. so that they never cross a chunk boundary."""
    dataset = table_dataset(table, source, class_index, transform, substitute=False)
    pin = torch.cuda.is_available()
    if batches is not None:
        return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      persistent_workers=False, pin_memory=pin)
