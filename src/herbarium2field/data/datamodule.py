"""Lightning data module: manifest → train/validation split → per-domain transforms → balanced loaders."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from herbarium2field.config import ExperimentConfig
from herbarium2field.data.datasets import ImageTableDataset
from herbarium2field.data.loaders import eval_loader, image_source, table_dataset
from herbarium2field.data.manifest import Dataset, labels_of
from herbarium2field.data.samplers import BalancedSampler, EpochLoader
from herbarium2field.data.split import validation_mask
from herbarium2field.data.transforms import Preprocessing, eval_transform, train_transform


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
