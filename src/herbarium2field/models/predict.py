"""Batched inference: a network over a table of images → L2-normalised embeddings and logits.

One function serves evaluation, prototypes, t-SNE, the herbarium gallery and identification, so they all
see exactly the same preprocessing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from herbarium2field.data.cache import ImageSource
from herbarium2field.data.datamodule import eval_loader
from herbarium2field.data.transforms import eval_transform, tta_transforms
from herbarium2field.errors import H2FError, ImageError
from herbarium2field.models.backbones import Preprocessing


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
    views = tta_transforms(pre, tta) if tta else [eval_transform(pre)]
    embs: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    start = time.perf_counter()
    for v, transform in enumerate(views):
        loader = eval_loader(table, source, class_index or {}, transform, batch_size=batch_size,
                             num_workers=num_workers)
        e_view, l_view = [], []
        failed: list[int] = []
        for x, _, _, idx in _progress(loader, progress,
                                      f"{description} (view {v + 1}/{len(views)})" if tta else description):
            failed += [-int(i) - 1 for i in idx if i < 0]
            emb, logit = _forward(net, x.to(device))
            e_view.append(emb)
            if logit is not None:
                l_view.append(logit)
        if failed:
            raise _unreadable(table, source, failed)
        embs.append(np.concatenate(e_view) if e_view else np.zeros((0, 0), np.float32))
        if l_view:
            logits.append(np.concatenate(l_view))
    emb = np.mean(embs, axis=0)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return Outputs(emb.astype(np.float32), np.mean(logits, axis=0).astype(np.float32) if logits else None,
                   time.perf_counter() - start)


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


def _forward(net: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    if hasattr(net, "embed"):
        e = net.embed(x)
        logit = net.head.logits(e).float().cpu().numpy()  # type: ignore[attr-defined]
    else:
        e, logit = net(x), None
        if e.ndim > 2:  # feature map or tokens from a backbone without pooling
            e = e.flatten(2).mean(-1) if e.ndim == 4 else e.mean(1)
    return F.normalize(e.float(), dim=1).cpu().numpy(), logit


@torch.inference_mode()
def embed_images(net: nn.Module, images: Sequence[Image.Image], pre: Preprocessing,
                 tta: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed in-memory images (uploads, CLI photos): ``(embeddings [N, D], logits [N, C] | None)``."""
    device = default_device()
    net = net.to(device).eval()
    views = tta_transforms(pre, tta) if tta else [eval_transform(pre)]
    outs = [_forward(net, torch.stack([t(img) for img in images]).to(device)) for t in views]
    emb = np.mean([o[0] for o in outs], axis=0)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    logit = np.mean([o[1] for o in outs], axis=0) if outs[0][1] is not None else None
    return emb.astype(np.float32), logit


def _progress(loader: torch.utils.data.DataLoader, show: bool, description: str) -> Callable:  # type: ignore[type-arg]
    if not show:
        return iter(loader)  # type: ignore[return-value]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    def gen():  # type: ignore[no-untyped-def]
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn()) as bar:
            task = bar.add_task(description, total=len(loader.dataset), rate="-")  # type: ignore[arg-type]
            start, done = time.perf_counter(), 0
            for batch in loader:
                yield batch
                done += len(batch[0])
                bar.update(task, advance=len(batch[0]), rate=f"{done / (time.perf_counter() - start):.1f}")

    return gen()  # type: ignore[return-value]
