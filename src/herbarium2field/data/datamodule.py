"""Lightning data module: manifest → train/validation split → per-domain transforms → balanced loaders.

Two ways to turn the training files into batches (``decode``): ``"pil"`` (the default: PIL decode with
JPEG draft mode, PIL transforms, bit-for-bit reproducible) and ``"gpu"`` (workers only read bytes; the
batch is decoded with nvJPEG and augmented on the training device in
:meth:`H2FDataModule.on_before_batch_transfer`, see :mod:`.decode`). Both read the ``h2f prepare`` cache
when it is present and large enough.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from herbarium2field.config import ExperimentConfig
from herbarium2field.data.datasets import (
    EncodedTableDataset,
    ImageTableDataset,
    collate_encoded,
)
from herbarium2field.data.decode import DECODERS, TensorAugment, decode_batch, tensor_path_supports
from herbarium2field.data.loaders import eval_loader, image_source, loader_options, table_dataset
from herbarium2field.data.manifest import Dataset, labels_of
from herbarium2field.data.samplers import BalancedSampler, EpochLoader
from herbarium2field.data.split import validation_mask
from herbarium2field.data.transforms import Preprocessing, eval_transform, train_transform
from herbarium2field.errors import ConfigError


class H2FDataModule(L.LightningDataModule):
    """Splits the training images into train/validation (seeded, stratified) and serves balanced batches."""

    def __init__(self, cfg: ExperimentConfig, ds: Dataset, pre: Preprocessing | None = None, *,
                 decode: str = "pil") -> None:
        super().__init__()
        if decode not in DECODERS:
            raise ConfigError(f"unknown decode path {decode!r}; use one of {', '.join(DECODERS)}")
        self.cfg, self.ds, self.decode = cfg, ds, decode
        self._augment: dict[int, TensorAugment] = {}
        self.class_index = ds.class_index()
        train = ds.split("train")
        d = cfg.data
        mask = validation_mask(train, field_fraction=d.val_field_fraction, herbarium_fraction=d.val_herbarium_fraction,
                               seed=cfg.seed if d.val_seed is None else d.val_seed)
        self.train_table = train[~mask].reset_index(drop=True)
        self.val_table = train[mask].reset_index(drop=True)
        if pre is not None:
            self.set_preprocessing(pre)

    def set_preprocessing(self, pre: Preprocessing) -> None:
        """Input size and normalisation come from the backbone, which is built after the split."""
        self.pre = pre
        d = self.cfg.data
        self.source = image_source(self.ds, cache=d.cache, size=d.cache_size, min_size=pre.input_size)

    @property
    def val_groups(self) -> dict[str, np.ndarray]:
        """Boolean masks of the validation rows per species group."""
        has = self.val_table.has_pairs.to_numpy(dtype=bool)
        return {"with_pairs": has, "without_pairs": ~has}

    def class_counts(self) -> np.ndarray:
        """Training images per class index (after the validation split)."""
        labels = labels_of(self.train_table, self.class_index)
        return np.bincount(labels[labels >= 0], minlength=len(self.class_index))

    def train_dataset(self) -> ImageTableDataset:
        d = self.cfg.data
        if self.decode != "pil":
            reason = tensor_path_supports(d.herbarium_aug, self.pre) or tensor_path_supports(d.field_aug, self.pre)
            if reason:
                warnings.warn(f"decode={self.decode!r} is not possible for this recipe ({reason}): using PIL",
                              stacklevel=2)
                self.decode = "pil"
        if self.decode == "pil":
            field_pool = self.train_table.loc[self.train_table.domain == "field", "path"].tolist()
            transforms = {
                0: train_transform(d.herbarium_aug, self.pre, domain="herbarium", field_pool=field_pool,
                                   loader=self.source.load),
                1: train_transform(d.field_aug, self.pre, domain="field"),
            }
            return table_dataset(self.train_table, self.source, self.class_index, transforms)
        base = table_dataset(self.train_table, self.source, self.class_index, {})
        self._augment = {0: TensorAugment(d.herbarium_aug, self.pre), 1: TensorAugment(d.field_aug, self.pre)}
        return EncodedTableDataset(base.paths, base.labels, base.domains, self.source, {})

    def train_dataloader(self) -> DataLoader:
        d = self.cfg.data
        dataset = self.train_dataset()
        sampler = BalancedSampler(dataset.labels, dataset.domains, class_balance=d.sampler.class_balance,
                                  field_share=d.sampler.field_share, num_samples=d.sampler.epoch_size,
                                  seed=self.cfg.seed)
        opts = loader_options(d.num_workers)
        if self.decode == "gpu":  # bytes stay in host memory: nvJPEG reads them from there
            opts.update(pin_memory=False, collate_fn=collate_encoded)
        return EpochLoader(dataset, batch_size=d.batch_size, sampler=sampler,
                           drop_last=len(sampler) > d.batch_size, **opts)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``decode="gpu"``: decode and augment a batch of file bytes on the training device."""
        if isinstance(batch, dict) and "encoded" in batch:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            return self.decode_encoded(batch, device)
        return batch

    def decode_encoded(self, batch: dict[str, Any], device: torch.device | str) -> tuple[torch.Tensor, ...]:
        """A batch of :func:`~.datasets.collate_encoded` as ``(images, labels, domains, rows)`` on ``device``:
        nvJPEG (or libjpeg-turbo on a CPU) for the whole batch, then :class:`~.decode.TensorAugment` per
        domain. An image that does not decode is replaced by another of the batch, with a warning."""
        rows = batch["rows"].tolist()
        names = [str(self.train_table.path.iat[r]) for r in rows]
        images = decode_batch(batch["encoded"], device=device, names=names, errors="none")
        good = [i for i, x in enumerate(images) if x is not None]
        if not good:
            raise ValueError(f"no image of this batch decodes: {', '.join(names)}")
        for i, x in enumerate(images):
            if x is None:
                warnings.warn(f"skipping an image that does not decode: {names[i]}", stacklevel=2)
                images[i] = images[good[i % len(good)]]
        domains = batch["domains"].tolist()
        out = torch.empty((len(images), 3, self.pre.input_size, self.pre.input_size), device=device)
        for code, augment in self._augment.items():
            sel = [i for i, c in enumerate(domains) if c == code]
            if sel:
                out[sel] = augment([images[i] for i in sel], [batch["seeds"][i] for i in sel])
        return out, batch["labels"], batch["domains"], batch["rows"]

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_table) == 0:
            return []
        d = self.cfg.data
        return eval_loader(self.val_table, self.source, self.class_index, eval_transform(self.pre),
                           batch_size=d.eval_batch_size or d.batch_size, num_workers=d.num_workers)
