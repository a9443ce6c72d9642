"""Losses added to the head's loss to pull a species' herbarium sheets and field photos together.

- ``supcon`` / ``triplet``: cross-domain metric learning (pytorch-metric-learning), where positives are
  a sheet and a photo of the same species (never two images of the same domain), so the loss acts on the
  domain gap and not on what the head already does.
- ``domain_adversarial``: a domain classifier behind a gradient-reversal layer (DANN), which pushes the
  embedding to carry no herbarium/field signal.
- ``genus``: a softmax head over genera (the hierarchical loss): a herbarium-only species whose genus has
  species with field photos learns from those photos at genus level.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss, TripletMarginLoss
from torch import Tensor, nn

from herbarium2field.config import ExperimentConfig


def cross_domain_pairs(labels: Tensor, domains: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PML pair indices: positives = same species, different domain; negatives = different species."""
    same = labels[:, None] == labels[None, :]
    cross = domains[:, None] != domains[None, :]
    a1, p = torch.nonzero(same & cross, as_tuple=True)
    a2, n = torch.nonzero(~same, as_tuple=True)
    return a1, p, a2, n


def cross_domain_triplets(labels: Tensor, domains: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Triplets (field photo, sheet of its species, any other species' image)."""
    same = labels[:, None] == labels[None, :]
    pos = same & (domains[:, None] == 1) & (domains[None, :] == 0)
    a, p = torch.nonzero(pos, as_tuple=True)
    if len(a) == 0:
        return a, p, p
    neg = ~same[a]  # [T, B]
    # one random negative per (anchor, positive): keeps the triplet count linear in the batch
    scores = torch.rand(neg.shape, device=labels.device) * neg
    n = scores.argmax(dim=1)
    keep = neg[torch.arange(len(a), device=labels.device), n]
    return a[keep], p[keep], n[keep]


class CrossDomainMetricLoss(nn.Module):
    def __init__(self, kind: str, weight: float) -> None:
        super().__init__()
        self.kind, self.weight = kind, weight
        self.loss = SupConLoss(temperature=0.1) if kind == "supcon" else TripletMarginLoss(margin=0.2)

    def forward(self, emb: Tensor, labels: Tensor, domains: Tensor) -> Tensor:
        emb = F.normalize(emb.float(), dim=1)
        idx = cross_domain_pairs(labels, domains) if self.kind == "supcon" else cross_domain_triplets(labels, domains)
        if len(idx[0]) == 0:
            return emb.sum() * 0.0  # no cross-domain positive in this batch
        return self.loss(emb, labels, indices_tuple=idx)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.lam * grad, None


class DomainAdversarialLoss(nn.Module):
    """DANN: an MLP predicts the domain from the embedding through a gradient-reversal layer."""

    def __init__(self, dim: int, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.classifier = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 1))

    def forward(self, emb: Tensor, labels: Tensor, domains: Tensor) -> Tensor:
        logits = self.classifier(_GradReverse.apply(emb.float(), 1.0)).squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, domains.float())


class GenusLoss(nn.Module):
    """Cross-entropy of a linear genus head: the species label mapped to its genus."""

    def __init__(self, dim: int, genus_of_class: np.ndarray, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.register_buffer("genus_of_class", torch.as_tensor(genus_of_class, dtype=torch.long), persistent=False)
        self.head = nn.Linear(dim, int(genus_of_class.max()) + 1)

    def forward(self, emb: Tensor, labels: Tensor, domains: Tensor) -> Tensor:
        return F.cross_entropy(self.head(emb.float()), self.genus_of_class[labels])


def build_extra_losses(cfg: ExperimentConfig, dim: int, genus_of_class: np.ndarray | None = None) -> nn.ModuleDict:
    t = cfg.train
    losses: dict[str, nn.Module] = {}
    if t.genus_loss > 0 and genus_of_class is not None:
        losses["genus"] = GenusLoss(dim, genus_of_class, t.genus_loss)
    if t.cross_domain_loss != "none" and t.cross_domain_weight > 0:
        losses[t.cross_domain_loss] = CrossDomainMetricLoss(t.cross_domain_loss, t.cross_domain_weight)
    if t.domain_adversarial > 0:
        losses["domain_adv"] = DomainAdversarialLoss(dim, t.domain_adversarial)
    return nn.ModuleDict(losses)
