"""Lightning callbacks and plugins for our recipe: frozen warm-up, per-step seeding, per-epoch CSV, images/s,
early stopping that survives a resume, atomic checkpoints.

Resume contract: checkpoints are written at the end of a training epoch only (after validation, early
stopping and the CSV row), so a run killed at any point continues from its last completed epoch and ends
bit-identical to the run left alone on the CPU. Everything random is a function of (seed, epoch, batch):
batches and augmentations come from the sampler, in-model randomness from :class:`StepSeed`.
"""

from __future__ import annotations

import csv
import io
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, RichProgressBar
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.plugins.io import TorchCheckpointIO

from herbarium2field.io import atomic_path, atomic_write_text

EPOCH_COLUMNS = [
    "epoch", "stage", "train_loss", "val_loss", "val_top1", "val_top5", "val_top1_with_pairs", "val_top5_with_pairs",
    "val_top1_without_pairs", "val_top5_without_pairs", "lr_head", "lr_backbone", "images_per_s", "epoch_time_s",
]


class BackboneWarmup(Callback):
    """Head-only warm-up: the backbone is frozen (no gradients, BatchNorm statistics fixed) for the first
    ``epochs`` epochs, then fine-tuned. Applied at every epoch start, so a resumed run lands in the right stage.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def _apply(self, pl_module: L.LightningModule) -> None:
        frozen = pl_module.current_epoch < self.epochs
        backbone = pl_module.net.backbone  # type: ignore[attr-defined]
        for p in backbone.parameters():
            p.requires_grad_(not frozen)
        backbone.train(not frozen)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:  # Lightning may have switched the whole module to train() after validation
            self._apply(pl_module)


class StepSeed(Callback):
    """Seed ``random``, NumPy and torch in the main process before every training batch from (seed, epoch,
    batch index), so dropout, drop-path and any other in-model randomness do not depend on what ran before in
    this process: a resumed run (fresh process, loader iterators created at other moments) draws exactly
    what the uninterrupted one did. Data randomness is seeded per item by the sampler."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        s = int(np.random.SeedSequence([self.seed, trainer.current_epoch, batch_idx]).generate_state(1)[0])
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class Throughput(Callback):
    """Training images per second and epoch wall time (for the CSV, the progress bar and benchmarks)."""

    def __init__(self) -> None:
        self.images = 0
        self.start = time.perf_counter()
        self.images_per_s = 0.0
        self.epoch_time_s = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self.start = 0, time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.images += len(batch[0]) * trainer.world_size
        self.epoch_time_s = time.perf_counter() - self.start
        self.images_per_s = self.images / max(self.epoch_time_s, 1e-9)


class ImagesPerSecondBar(RichProgressBar):
    """Lightning's Rich progress bar (ETA included) with the training images/s shown beside the loss."""

    def __init__(self, throughput: Throughput) -> None:
        super().__init__(leave=True)
        self.throughput = throughput

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        metrics["img/s"] = f"{self.throughput.images_per_s:.1f}"
        return metrics


class EpochLog(Callback):
    """One plain line per epoch, for logs and terminals without a live progress bar (CI, ``make demo | tee``)."""

    def __init__(self, epochs: int, warmup_epochs: int, throughput: Throughput) -> None:
        self.epochs, self.warmup_epochs, self.throughput = epochs, warmup_epochs, throughput

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        stage = "warm-up, backbone frozen" if trainer.current_epoch < self.warmup_epochs else "fine-tuning"
        parts = [f"epoch {trainer.current_epoch + 1}/{self.epochs} ({stage})"]
        if "train/loss_epoch" in m:
            parts.append(f"train loss {float(m['train/loss_epoch']):.3f}")
        for key, label in (("val/top1", "val top-1"), ("val/top5", "top-5")):
            if key in m:
                parts.append(f"{label} {100 * float(m[key]):.1f}%")
        parts.append(f"{self.throughput.images_per_s:.1f} images/s, {self.throughput.epoch_time_s:.0f} s")
        print(", ".join(parts), flush=True)


class EpochCSV(Callback):
    """One row per epoch in ``metrics.csv`` (rewritten atomically, so resume continues it cleanly).

    ``lr_head`` and ``lr_backbone`` are the rates the epoch's last optimizer step used (a frozen warm-up epoch:
    ``train.lr_warmup_head`` and 0), not those the scheduler has already moved on to for the next epoch.

    The row of an epoch is written before that epoch's checkpoint; a run killed in between may hold a row
    its checkpoint does not know. On resume such rows are dropped, and the re-run epoch writes them again.
    """

    def __init__(self, path: Path, warmup_epochs: int, throughput: Throughput) -> None:
        self.path, self.warmup_epochs, self.throughput = path, warmup_epochs, throughput
        self.step_lrs: dict[str, float] | None = None  # the rates of this epoch's latest optimizer step

    @staticmethod
    def _lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rows = self._read()
        kept = [r for r in rows if int(r["epoch"]) < trainer.current_epoch]
        if len(kept) != len(rows):
            self._write(kept)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step_lrs = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        # before the step, hence before the per-step scheduler moves the rates on
        self.step_lrs = self._lrs(optimizer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
        lrs = self.step_lrs if self.step_lrs is not None else self._lrs(trainer.optimizers[0])  # (an epoch without steps)
        epoch = trainer.current_epoch
        row = {
            "epoch": epoch,
            "stage": "warmup" if epoch < self.warmup_epochs else "finetune",
            "train_loss": m.get("train/loss_epoch", m.get("train/loss")),
            "val_loss": m.get("val/loss"),
            "val_top1": m.get("val/top1"),
            "val_top5": m.get("val/top5"),
            "lr_head": lrs.get("head"),
            "lr_backbone": lrs.get("backbone"),
            "images_per_s": round(self.throughput.images_per_s, 2),
            "epoch_time_s": round(self.throughput.epoch_time_s, 2),
        }
        for g in ("with_pairs", "without_pairs"):
            for k in (1, 5):
                row[f"val_top{k}_{g}"] = m.get(f"val/top{k}_{g}")
        self._write([r for r in self._read() if int(r["epoch"]) < epoch] + [row])

    def _write(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EPOCH_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in EPOCH_COLUMNS})
        atomic_write_text(self.path, buf.getvalue())

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))


class ResumableEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping, and a run that had decided to stop stays stopped when resumed.

    Its counters are in every checkpoint, but the decision itself (``trainer.should_stop``) is not: resuming
    a run killed between its final checkpoint and its exit, or resuming a finished run, would train epochs
    the uninterrupted run never did.
    """

    @property
    def state_key(self) -> str:  # Lightning's key for EarlyStopping, so older checkpoints still resume
        return "EarlyStopping" + repr({"monitor": self.monitor, "mode": self.mode})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            trainer.should_stop = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed, so a kill never leaves a torn ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
