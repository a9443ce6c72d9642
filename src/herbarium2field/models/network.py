"""The identification network: backbone → pooling → embedding neck → head.

The *extractor* (backbone + pooling + neck) and the *head* are separate so that the same embeddings
serve classification, prototypes, retrieval of herbarium sheets and t-SNE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from herbarium2field.config import ModelConfig
from herbarium2field.models.backbones import create_backbone
from herbarium2field.models.heads import Head, create_head
from herbarium2field.models.weights import LoadReport


class GeM(nn.Module):
    """Generalised-mean pooling (learnable p), standard for retrieval; timm has avg/max pooling only."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 3:  # ViT tokens [B, N, C]: pool over tokens
            x = x.transpose(1, 2).unsqueeze(-1)
        p = self.p.clamp(1.0, 8.0)
        return F.adaptive_avg_pool2d(x.float().clamp_min(self.eps).pow(p), 1).pow(1.0 / p).flatten(1).to(x.dtype)


class EmbeddingNeck(nn.Module):
    """Dropout → optional linear projection → BatchNorm: a compact, well-conditioned embedding."""

    def __init__(self, in_dim: int, out_dim: int | None, dropout: float = 0.0) -> None:
        super().__init__()
        self.out_dim = out_dim or in_dim
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.proj = nn.Linear(in_dim, self.out_dim, bias=False) if out_dim else nn.Identity()
        self.bn = nn.BatchNorm1d(self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.proj(self.dropout(x)))


class H2FNet(nn.Module):
    """Backbone + neck + head. ``embed`` gives the (unnormalised) embedding; ``forward`` gives logits."""

    def __init__(self, cfg: ModelConfig, num_classes: int, *, load_weights: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone, self.load_report = create_backbone(
            cfg.backbone,
            pretrained=cfg.pretrained and load_weights,
            weights=cfg.weights if load_weights else None,
            global_pool={"gem": "", "avg": "avg", "default": None}[cfg.pool],
            drop_path_rate=cfg.drop_path_rate,
        )
        self.pool = GeM() if cfg.pool == "gem" else None
        # pooled output width: timm's pre-logits width (e.g. MobileNetV3's conv head) or the feature-map width
        feat_dim = int(self.backbone.num_features if self.pool is not None
                       else getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.neck = EmbeddingNeck(feat_dim, cfg.embedding_dim, cfg.dropout)
        a = cfg.arcface
        self.head: Head = create_head(cfg.head, self.neck.out_dim, num_classes, scale=a.scale, margin=a.margin,
                                      subcenters=a.subcenters, domain_subcenters=a.domain_subcenters,
                                      label_smoothing=cfg.label_smoothing)

    @property
    def embedding_dim(self) -> int:
        return self.neck.out_dim

    @property
    def weights_report(self) -> LoadReport | None:
        return self.load_report

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features (before the neck)."""
        if self.pool is None:
            return self.backbone(x)
        return self.pool(self.backbone.forward_features(x))

    def embed(self, x: Tensor) -> Tensor:
        return self.neck(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head.logits(self.embed(x))

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything trained from scratch (neck, pooling, head): the high-learning-rate group."""
        params = list(self.neck.parameters()) + list(self.head.parameters())
        return params + (list(self.pool.parameters()) if self.pool is not None else [])
