"""Class-balanced, domain-aware sampling: the training-time levers for the long tail and missing field photos.

Sampling probability of an image of class *c* and domain *d*:

    p(c) ∝ n_c^(1 - class_balance)           0 = natural frequency, 1 = every class equally often
    p(d | c) = field_share (field) / 1 - field_share (herbarium)   for classes that have both domains,
             = natural share otherwise; images within (c, d) uniformly.

Draws are with replacement, seeded by (seed, epoch), and each DDP rank takes its own slice of the same
draw. Each index comes with its own augmentation seed, so a resumed run sees exactly the batches *and
augmentations* the interrupted one would have, whatever the number of loader workers — provided the
sampler is asked for an epoch's draw after ``set_epoch``, which :class:`EpochLoader` guarantees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


def sample_weights(labels: np.ndarray, domains: np.ndarray, *, class_balance: float,
                   field_share: float | None) -> np.ndarray:
    """Per-image sampling probabilities (summing to 1) implementing the rule in the module docstring."""
    labels = np.asarray(labels)
    domains = np.asarray(domains)
    classes, counts = np.unique(labels, return_counts=True)
    class_p = counts.astype(float) ** (1.0 - class_balance)
    class_p /= class_p.sum()
    w = np.zeros(len(labels), dtype=float)
    for c, pc in zip(classes, class_p, strict=True):
        members = labels == c
        field = members & (domains == 1)
        herb = members & (domains == 0)
        nf, nh = int(field.sum()), int(herb.sum())
        if field_share is not None and nf and nh:
            w[field] = pc * field_share / nf
            w[herb] = pc * (1.0 - field_share) / nh
        else:
            w[members] = pc / members.sum()
    return w / w.sum()


class BalancedSampler(Sampler[tuple[int, int]]):
    """Draws ``num_samples`` indices per epoch from :func:`sample_weights`; rank-aware for DDP."""

    def __init__(self, labels: np.ndarray, domains: np.ndarray, *, class_balance: float = 0.5,
                 field_share: float | None = None, num_samples: int | None = None, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        if num_replicas is None or rank is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            num_replicas = dist.get_world_size() if ready else 1
            rank = dist.get_rank() if ready else 0
        self.weights = sample_weights(labels, domains, class_balance=class_balance, field_share=field_share)
        total = num_samples or len(labels)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.per_rank = -(-total // num_replicas)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at every epoch start (also after a resume), making draws reproducible.
        The draw itself happens when the loader's iterator starts: see :class:`EpochLoader`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Yields ``(image index, augmentation seed)`` pairs (see :class:`~.datasets.ImageTableDataset`)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.per_rank * self.num_replicas
        draw = rng.choice(len(self.weights), size=total, replace=True, p=self.weights)
        seeds = rng.integers(0, 2**31 - 1, size=total)
        mine = slice(self.rank, None, self.num_replicas)
        return iter(zip(draw[mine].tolist(), seeds[mine].tolist(), strict=True))


class EpochLoader(DataLoader):
    """A training DataLoader whose epoch starts at its first batch instead of at ``iter()``.

    A loader with worker processes asks its sampler for indices as soon as its iterator is created (the
    workers prefetch), and Lightning creates the training iterator before it calls ``set_epoch``: on a
    resumed run even before the checkpoint's epoch is restored (``estimated_stepping_batches`` in
    ``configure_optimizers``), and it does not create it again for that epoch (Lightning 2.5.3+, issue
    #21938). The first epoch after a resume then replayed epoch 0's batches. Here the real iterator is made
    on the first ``next()``, which Lightning calls after ``set_epoch``.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return _StartsOnFirstBatch(super().__iter__)


class _StartsOnFirstBatch:
    def __init__(self, start: Callable[[], Iterator[Any]]) -> None:
        self._start: Callable[[], Iterator[Any]] | None = start
        self._it: Iterator[Any] | None = None

    def __iter__(self) -> _StartsOnFirstBatch:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            assert self._start is not None
            self._it, self._start = iter(self._start()), None
        return next(self._it)
