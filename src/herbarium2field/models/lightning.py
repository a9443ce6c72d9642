"""The LightningModule: losses, the two-stage schedule (frozen-backbone warm-up, then fine-tuning) and
validation metrics per species group. The loop, checkpoints, DDP and precision are Lightning's.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from herbarium2field.config import ExperimentConfig
from herbarium2field.models.domain_losses import build_extra_losses
from herbarium2field.models.network import H2FNet

GROUPS = ("all", "with_pairs", "without_pairs")


class H2FLightningModule(L.LightningModule):
    """Trains an :class:`H2FNet`; ``class_counts`` enables loss re-weighting, ``with_pairs`` the group metrics."""

    def __init__(self, cfg: ExperimentConfig, num_classes: int, *, class_counts: np.ndarray | None = None,
                 with_pairs: np.ndarray | None = None, genus_of_class: np.ndarray | None = None,
                 load_weights: bool = True) -> None:
        super().__init__()
        self.hparams.update({"config": cfg.model_dump(mode="json"), "num_classes": num_classes})
        self.cfg = cfg
        self.net = H2FNet(cfg.model, num_classes, load_weights=load_weights)
        counts = np.ones(num_classes) if class_counts is None else np.maximum(np.asarray(class_counts, float), 1.0)
        strength = cfg.train.class_weighted_loss
        weights = counts ** (-strength)
        self.register_buffer("class_weights", torch.tensor(weights / weights.mean(), dtype=torch.float32),
                             persistent=False)
        pairs = np.ones(num_classes, bool) if with_pairs is None else np.asarray(with_pairs, bool)
        self.register_buffer("with_pairs", torch.tensor(pairs), persistent=False)
        self.val_metrics = nn.ModuleDict({
            f"{g}_top{k}": MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro")
            for g in GROUPS for k in (1, 5)
        })
        self.extra_losses = build_extra_losses(cfg, self.net.embedding_dim, genus_of_class)
        if cfg.trainer.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    # ---- training -------------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self.current_epoch < self.cfg.train.warmup_epochs

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, domain, _ = batch
        if self.cfg.trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self.net.embed(x)
        weights = self.class_weights[y] if self.cfg.train.class_weighted_loss else None
        loss = self.net.head.loss(emb, y, domain, weights)
        self.log("train/loss_head", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        for name, extra_loss in self.extra_losses.items():
            extra = extra_loss(emb, y, domain)
            self.log(f"train/loss_{name}", extra, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
            loss = loss + extra_loss.weight * extra
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    # ---- validation -----------------------------------------------------------------------------------

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, domain, _ = batch
        emb = self.net.embed(x)
        logits = self.net.head.logits(emb)
        known = y >= 0
        if known.any():
            loss = nn.functional.cross_entropy(logits[known].float(), y[known])
            self.log("val/loss", loss, on_epoch=True, batch_size=int(known.sum()), sync_dist=True)
        for g in GROUPS:
            sel = known if g == "all" else known & (self.with_pairs[y.clamp_min(0)] == (g == "with_pairs"))
            if sel.any():
                for k in (1, 5):
                    self.val_metrics[f"{g}_top{k}"].update(logits[sel], y[sel])

    def on_validation_epoch_end(self) -> None:
        for g in GROUPS:
            for k in (1, 5):
                metric = self.val_metrics[f"{g}_top{k}"]
                if metric.update_called:
                    name = f"val/top{k}" if g == "all" else f"val/top{k}_{g}"
                    self.log(name, metric.compute(), prog_bar=(g == "all" and k == 1), sync_dist=True)
                metric.reset()

    # ---- optimisation ---------------------------------------------------------------------------------

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        t = self.cfg.train
        head_params = self.net.head_parameters() + list(self.extra_losses.parameters())
        head_ids = {id(p) for p in head_params}
        backbone_params = [p for p in self.parameters() if id(p) not in head_ids]
        groups = [
            {"params": backbone_params, "lr": t.lr_backbone, "name": "backbone"},
            {"params": head_params, "lr": t.lr_head, "name": "head"},
        ]
        optimizer = torch.optim.AdamW(groups, weight_decay=t.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        frozen_steps = per_epoch * t.warmup_epochs
        schedule = lr_schedule(total_steps=total, frozen_steps=frozen_steps, warmup_frac=t.lr_warmup_steps,
                               min_ratio=t.min_lr_ratio)
        head_warm = t.lr_warmup_head / t.lr_head

        def backbone_lambda(step: int) -> float:
            return 0.0 if step < frozen_steps else schedule(step)

        def head_lambda(step: int) -> float:
            return head_warm if step < frozen_steps else schedule(step)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [backbone_lambda, head_lambda])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_schedule(*, total_steps: int, frozen_steps: int, warmup_frac: float, min_ratio: float):  # type: ignore[no-untyped-def]
    """Fine-tuning stage multiplier: linear warm-up over ``warmup_frac`` of its steps, then cosine decay."""
    span = max(total_steps - frozen_steps, 1)
    warm = max(int(span * warmup_frac), 0)

    def f(step: int) -> float:
        s = step - frozen_steps
        if s < warm:
            return (s + 1) / (warm + 1)
        progress = min((s - warm) / max(span - warm, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f

