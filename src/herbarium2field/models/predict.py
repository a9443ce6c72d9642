"""Batched inference: a network over a table of images → L2-normalised embeddings and logits.

One function serves evaluation, prototypes, t-SNE, the herbarium gallery and identification, so they all
see exactly the same preprocessing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from herbarium2field.data.cache import ImageSource
from herbarium2field.data.transforms import eval_transform, tta_transforms
from herbarium2field.errors import H2FError, ImageError
from herbarium2field.models.backbones import Preprocessing
from herbarium2field.progress import track_images


@dataclass
class Outputs:
    embeddings: np.ndarray  # [N, D] float32, L2-normalised
    logits: np.ndarray | None  # [N, C] float32 (None for a bare feature extractor)
    seconds: float

    @property
    def images_per_s(self) -> float:
        return len(self.embeddings) / max(self.seconds, 1e-9)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def run_network(net: nn.Module, table: pd.DataFrame, source: ImageSource, pre: Preprocessing, *,
                class_index: dict[str, int] | None = None, tta: str | None = None, batch_size: int = 64,
                num_workers: int = 2, progress: bool = False, description: str = "embedding") -> Outputs:
    """Embed (and classify, when ``net`` has a head) every row of ``table``.

    ``net`` is an :class:`~herbarium2field.models.network.H2FNet` (``embed`` + ``head.logits``) or a bare
    timm backbone (its pooled features are the embedding). With ``tta`` the views' embeddings and logits
    are averaged.
    """
    device = default_device()
    net = net.to(device).eval()
    views = _views(pre, tta)
    embs: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    start = time.perf_counter()
    for v, transform in enumerate(views):
        e_view, l_view = [], []
        failed: list[int] = []
        for x, idx in table_batches(table, source, transform, class_index=class_index, batch_size=batch_size,
                                    num_workers=num_workers, progress=progress,
                                    description=f"{description} (view {v + 1}/{len(views)})" if tta else description):
            failed += [-int(i) - 1 for i in idx if i < 0]
            emb, logit = embed_and_score(net, x.to(device))
            e_view.append(emb)
            if logit is not None:
                l_view.append(logit)
        if failed:
            raise _unreadable(table, source, failed)
        embs.append(np.concatenate(e_view) if e_view else np.zeros((0, 0), np.float32))
        if l_view:
            logits.append(np.concatenate(l_view))
    return Outputs(*_combine_views(embs, logits), time.perf_counter() - start)


def _views(pre: Preprocessing, tta: str | None) -> list[Callable[[Image.Image], torch.Tensor]]:
    """The eval transform, or the test-time augmentation's views."""
    return tta_transforms(pre, tta) if tta else [eval_transform(pre)]


def _combine_views(embs: list[np.ndarray], logits: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """One answer from the views: their mean embedding, L2-normalised again, and their mean logits."""
    emb = np.mean(embs, axis=0)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32), np.mean(logits, axis=0).astype(np.float32) if logits else None


def table_batches(table: pd.DataFrame, source: ImageSource, transform: Callable[[Image.Image], torch.Tensor], *,
                  class_index: dict[str, int] | None = None, batch_size: int = 64, num_workers: int = 2,
                  progress: bool = False, description: str = "embedding") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, rows)`` batches over every row of ``table``, in order, with an optional images/s bar.

    An image that cannot be read comes back as a blank tensor with row ``-(i + 1)``, never as another image:
    the caller decides whether that is an error (evaluation) or a NaN row (gallery, feature cache).
    """
    from herbarium2field.data.datamodule import eval_loader  # imports Lightning: only when a table is read

    loader = eval_loader(table, source, class_index or {}, transform, batch_size=batch_size, num_workers=num_workers)
    for x, _, _, rows in track_images(loader, len(table), description, show=progress, count=lambda b: len(b[0])):
        yield x, rows


def _unreadable(table: pd.DataFrame, source: ImageSource, rows: list[int]) -> H2FError:
    """One error naming every image that could not be read (with the reason, re-read here)."""
    lines = []
    for i in rows[:20]:
        path = table.path.iloc[i]
        try:
            source.load(path)
            reason = "unreadable in a loader worker"
        except ImageError as exc:
            reason = exc.message
        where = ""
        if "source" in table and "line" in table:
            line = table.line.iloc[i]
            where = f"{table.source.iloc[i]}" + ("" if pd.isna(line) else f":{line}")
        lines.append(f"  {path}{f' (listed at {where})' if where else ''}: {reason}")
    more = f"\n  ... and {len(rows) - 20} more" if len(rows) > 20 else ""
    return H2FError(f"{len(rows)} image(s) could not be read:\n" + "\n".join(lines) + more,
                    path=source.root, hint="fix or remove them (h2f validate lists all problems), or pass --allow-missing")


def _pooled(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The embedding before L2-normalisation: ``net.embed`` for an H2FNet, pooled features for a timm model."""
    e = net.embed(x) if hasattr(net, "embed") else net(x)
    if e.ndim > 2:  # feature map or tokens from a backbone without pooling
        e = e.flatten(2).mean(-1) if e.ndim == 4 else e.mean(1)
    return e


def embed_batch(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings of a batch: ``net.embed`` for an H2FNet, pooled features for a timm model."""
    return F.normalize(_pooled(net, x).float(), dim=1)


def embed_and_score(net: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """``(L2-normalised embeddings, logits)`` of a batch as float32 arrays; logits are None without a head."""
    e = _pooled(net, x)
    logit = net.head.logits(e).float().cpu().numpy() if hasattr(net, "embed") else None  # type: ignore[attr-defined]
    return F.normalize(e.float(), dim=1).cpu().numpy(), logit


@torch.inference_mode()
def embed_images(net: nn.Module, images: Sequence[Image.Image], pre: Preprocessing,
                 tta: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed in-memory images (uploads, CLI photos): ``(embeddings [N, D], logits [N, C] | None)``."""
    device = default_device()
    net = net.to(device).eval()
    outs = [embed_and_score(net, torch.stack([t(img) for img in images]).to(device)) for t in _views(pre, tta)]
    return _combine_views([e for e, _ in outs], [lg for _, lg in outs if lg is not None])
