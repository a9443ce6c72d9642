"""Lightning data module: manifest → train/validation split → per-domain transforms → balanced loaders."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from herbarium2field.config import ExperimentConfig
from herbarium2field.data.cache import DEFAULT_SIZE, ImageSource
from herbarium2field.data.datasets import DOMAIN_CODES, ImageTableDataset
from herbarium2field.data.manifest import Dataset, labels_of
from herbarium2field.data.samplers import BalancedSampler
from herbarium2field.data.split import validation_mask
from herbarium2field.data.transforms import eval_transform, train_transform
from herbarium2field.models.backbones import Preprocessing


def image_source(ds: Dataset, *, cache: bool = True, size: int | None = None, min_size: int = 0) -> ImageSource:
    """Where pixels come from: the `h2f prepare` cache when present and large enough, else the originals.

    ``min_size`` is the short side the model needs: a cache smaller than that is not used.
    """
    return ImageSource(ds.root, size=max(size or DEFAULT_SIZE, min_size), use_cache=cache)


def table_dataset(table: pd.DataFrame, source: ImageSource, class_index: dict[str, int],
                  transforms: dict[int, Callable] | Callable, *, substitute: bool = True) -> ImageTableDataset:
    return ImageTableDataset(
        table.path.tolist(), labels_of(table, class_index),
        [DOMAIN_CODES[str(d)] for d in table.domain], source, transforms, substitute=substitute)


def eval_loader(table: pd.DataFrame, source: ImageSource, class_index: dict[str, int],
                transform: Callable[[Image.Image], torch.Tensor], *, batch_size: int = 64,
                num_workers: int = 2) -> DataLoader:
    """An ordered loader over any table (test set, gallery, validation) for inference; unreadable images
    come back flagged (negative row index), never replaced by another image."""
    return DataLoader(table_dataset(table, source, class_index, transform, substitute=False), batch_size=batch_size,
                      shuffle=False,
                      num_workers=num_workers, persistent_workers=False, pin_memory=torch.cuda.is_available())


class H2FDataModule(L.LightningDataModule):
    """Splits the training images into train/validation (seeded, stratified) and serves balanced batches."""

    def __init__(self, cfg: ExperimentConfig, ds: Dataset, pre: Preprocessing | None = None) -> None:
        super().__init__()
        self.cfg, self.ds = cfg, ds
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
        field_pool = self.train_table.loc[self.train_table.domain == "field", "path"].tolist()
        transforms = {
            0: train_transform(d.herbarium_aug, self.pre, domain="herbarium", field_pool=field_pool,
                               loader=self.source.load),
            1: train_transform(d.field_aug, self.pre, domain="field"),
        }
        return table_dataset(self.train_table, self.source, self.class_index, transforms)

    def train_dataloader(self) -> DataLoader:
        from herbarium2field.data.samplers import EpochLoader

        d = self.cfg.data
        dataset = self.train_dataset()
        sampler = BalancedSampler(dataset.labels, dataset.domains, class_balance=d.sampler.class_balance,
                                  field_share=d.sampler.field_share, num_samples=d.sampler.epoch_size,
                                  seed=self.cfg.seed)
        return EpochLoader(dataset, batch_size=d.batch_size, sampler=sampler, num_workers=d.num_workers,
                           drop_last=len(sampler) > d.batch_size, persistent_workers=d.num_workers > 0,
                           pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_table) == 0:
            return []
        d = self.cfg.data
        return eval_loader(self.val_table, self.source, self.class_index, eval_transform(self.pre),
                           batch_size=d.eval_batch_size or d.batch_size, num_workers=d.num_workers)
