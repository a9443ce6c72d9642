"""Classification heads over the embedding: plain softmax, ArcFace, sub-centre ArcFace, domain sub-centres.

A head has two faces: ``loss(emb, labels, ...)`` for training (ArcFace adds its angular margin to the true
class here only) and ``logits(emb)`` for inference (ArcFace: ``s·cos θ`` with no margin). ArcFace and
sub-centre ArcFace come from pytorch-metric-learning. The per-domain sub-centre variant is ours, because
PML picks a sample's sub-centre by the max rule and cannot tie sub-centre *k* to the sample's domain.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss, SubCenterArcFaceLoss
from pytorch_metric_learning.reducers import DoNothingReducer
from torch import Tensor, nn

HERBARIUM, FIELD = 0, 1  # domain codes used throughout training


class Head(nn.Module):
    """Interface: per-sample losses for training, margin-free logits for inference."""

    def logits(self, emb: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def losses(self, emb: Tensor, labels: Tensor, domains: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def loss(self, emb: Tensor, labels: Tensor, domains: Tensor | None = None,
             weights: Tensor | None = None) -> Tensor:
        """Mean loss, optionally weighted per sample (class re-weighting)."""
        per = self.losses(emb, labels, domains)
        if weights is None:
            return per.mean()
        return (per * weights).sum() / weights.sum().clamp_min(1e-12)


class SoftmaxHead(Head):
    """Linear layer + cross-entropy: the 'mix-stream CNN' baseline head."""

    def __init__(self, dim: int, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)
        self.label_smoothing = label_smoothing

    def logits(self, emb: Tensor) -> Tensor:
        return self.fc(emb)

    def losses(self, emb: Tensor, labels: Tensor, domains: Tensor | None = None) -> Tensor:
        return F.cross_entropy(self.fc(emb), labels, reduction="none", label_smoothing=self.label_smoothing)


class ArcFaceHead(Head):
    """Additive angular margin (ArcFace) via pytorch-metric-learning; ``subcenters > 1`` → sub-centre ArcFace.

    ``margin`` is in radians (PML takes degrees). The loss runs in float32 because PML casts its weight
    matrix to the embeddings' dtype, which under bf16 autocast would silently demote the parameters.
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 15.0, margin: float = 0.15,
                 subcenters: int = 1) -> None:
        super().__init__()
        kwargs = {"num_classes": num_classes, "embedding_size": dim, "margin": math.degrees(margin), "scale": scale,
                  "reducer": DoNothingReducer()}
        self.loss_fn = SubCenterArcFaceLoss(sub_centers=subcenters, **kwargs) if subcenters > 1 else ArcFaceLoss(**kwargs)
        self.scale, self.margin, self.subcenters = scale, margin, subcenters

    def logits(self, emb: Tensor) -> Tensor:
        return self.loss_fn.get_logits(emb.float())

    def losses(self, emb: Tensor, labels: Tensor, domains: Tensor | None = None) -> Tensor:
        with torch.autocast(emb.device.type, enabled=False):
            out = self.loss_fn(emb.float(), labels)["loss"]
        return out["losses"]

    @property
    def class_weights(self) -> Tensor:
        """Normalised class centres, ``[num_classes * subcenters, dim]`` (PML stores ``W`` as ``[dim, C·k]``)."""
        return F.normalize(self.loss_fn.W.t(), dim=1)


class DomainSubcenterArcFaceHead(Head):
    """ArcFace with two sub-centres per class, one per domain (herbarium, field).

    In training the true class's margin logit uses the sub-centre of the sample's own domain, so the
    sheet centre and the photo centre of a species each learn their domain's look while staying one
    class. Species without field photos get a field centre only through what the network shares across
    species. At inference a photo's logit for a class is the max over its two centres.
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 15.0, margin: float = 0.15) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(num_classes, 2, dim))
        nn.init.normal_(self.W, std=0.01)
        self.scale, self.margin = scale, margin

    def _cosine(self, emb: Tensor) -> Tensor:
        return torch.einsum("bd,ckd->bck", F.normalize(emb.float(), dim=1), F.normalize(self.W.float(), dim=2))

    def logits(self, emb: Tensor) -> Tensor:
        return self.scale * self._cosine(emb).amax(dim=2)

    def losses(self, emb: Tensor, labels: Tensor, domains: Tensor | None = None) -> Tensor:
        with torch.autocast(emb.device.type, enabled=False):
            cos = self._cosine(emb)  # [B, C, 2]
            if domains is None:
                domains = torch.full_like(labels, FIELD)
            rows = torch.arange(len(labels), device=emb.device)
            target = cos[rows, labels, domains.clamp(0, 1)]
            logits = cos.amax(dim=2).clone()
            theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
            with_margin = torch.where(theta <= math.pi - self.margin, torch.cos(theta + self.margin),
                                      target - self.margin * math.sin(self.margin))
            logits[rows, labels] = with_margin
            return F.cross_entropy(self.scale * logits, labels, reduction="none")

    @property
    def class_weights(self) -> Tensor:
        return F.normalize(self.W.reshape(-1, self.W.shape[-1]), dim=1)


def create_head(kind: str, dim: int, num_classes: int, *, scale: float = 15.0, margin: float = 0.15,
                subcenters: int = 1, domain_subcenters: bool = False, label_smoothing: float = 0.0) -> Head:
    """Build a head by name (``softmax`` | ``arcface``), the way timm builds backbones by name."""
    if kind == "softmax":
        return SoftmaxHead(dim, num_classes, label_smoothing)
    if kind == "arcface":
        if domain_subcenters:
            return DomainSubcenterArcFaceHead(dim, num_classes, scale, margin)
        return ArcFaceHead(dim, num_classes, scale, margin, subcenters)
    raise ValueError(f"unknown head {kind!r}")
