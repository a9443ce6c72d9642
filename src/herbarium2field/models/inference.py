"""The one batched inference loop: images (a dataset table or in-memory photos) through an
:class:`~herbarium2field.models.extractor.Extractor`, in order, with an images/s bar.

Evaluation, ``h2f embed``, the gallery, identification and ``h2f predict`` all call this module, so they
see exactly the same preprocessing (the timm eval transform of the model's :class:`Preprocessing`),
test-time augmentation and handling of unreadable images:

- ``errors="raise"`` (evaluation): every unreadable image is named in one error at the end of the pass;
- ``errors="nan"`` (gallery, feature cache, collections): its row comes back as NaN, never as another
  image's output, and the caller reports or skips it.

Test-time augmentation stacks the views of an image in the loader (``[B, V, 3, S, S]``), so the data are
read once and every view goes through the network in the same batch; the views' embeddings are averaged
and L2-normalised again, their logits averaged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from PIL import Image

from herbarium2field.data.cache import ImageSource
from herbarium2field.data.loaders import eval_loader
from herbarium2field.data.transforms import Preprocessing, eval_transform, tta_transforms
from herbarium2field.errors import H2FError, ImageError
from herbarium2field.models.extractor import Extractor
from herbarium2field.progress import track_images

ERROR_MODES = ("raise", "nan")


@dataclass
class Outputs:
    """What a pass over a table gave: one row per table row, in table order."""

    embeddings: np.ndarray  # [N, D] float32, L2-normalised (NaN rows: unreadable, errors="nan")
    logits: np.ndarray | None  # [N, C] float32, or None for an extractor without a head
    seconds: float
    failed: list[int] = field(default_factory=list)  # rows whose image could not be read
    branch: np.ndarray | None = None  # [N, D] the branch extractor's embeddings, when one was given

    @property
    def images_per_s(self) -> float:
        return len(self.embeddings) / max(self.seconds, 1e-9)


class Views:
    """The transform of one image into its test-time views, stacked ``[V, 3, S, S]`` (picklable for workers)."""

    def __init__(self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.stack([t(img) for t in self.transforms])


def input_transform(pre: Preprocessing, tta: str | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """The eval transform, or the stacked views of a test-time augmentation (``flip`` | ``multicrop``)."""
    return Views(tta_transforms(pre, tta)) if tta else eval_transform(pre)


def forward(extractor: Extractor, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """One batch; ``[B, V, 3, S, S]`` view stacks are run together and averaged per image."""
    if x.ndim == 4:
        return extractor(x)
    b, v = x.shape[:2]
    emb, logits = extractor(x.flatten(0, 1))
    emb = emb.reshape(b, v, -1).mean(axis=1)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32), (logits.reshape(b, v, -1).mean(axis=1).astype(np.float32)
                                    if logits is not None else None)


@dataclass
class Batch:
    """One batch of a pass over a table: ``rows`` (positions in the table) and their outputs; where ``ok`` is
    false the image could not be read and every output is NaN."""

    rows: np.ndarray
    embeddings: np.ndarray
    logits: np.ndarray | None
    ok: np.ndarray
    branch: np.ndarray | None = None  # the second extractor's embeddings (e.g. the greyscale photo)


def iter_table(extractor: Extractor, table: pd.DataFrame, source: ImageSource, *, tta: str | None = None,
               batch_size: int = 64, num_workers: int = 2, progress: bool = False, description: str = "embedding",
               batches: list[list[int]] | None = None, branch: Extractor | None = None) -> Iterator[Batch]:
    """Yield a :class:`Batch` at a time over ``table``, in order (for streaming writers).

    ``batches`` (row positions per batch) replaces ``batch_size`` when the batches must be fixed; ``branch`` is
    a second extractor run on the same input batch (read and decoded once).
    """
    loader = eval_loader(table, source, {}, input_transform(extractor.pre, tta), batch_size=batch_size,
                         num_workers=num_workers, batches=batches)
    for x, _, _, pos in track_images(loader, len(table), description, show=progress, count=lambda b: len(b[0])):
        ok = (pos >= 0).numpy()
        rows = np.where(ok, pos.numpy(), -pos.numpy() - 1)
        emb, logits = forward(extractor, x)
        extra = forward(branch, x)[0] if branch is not None else None
        if not ok.all():
            emb, logits, extra = (_blank(a, ok) for a in (emb, logits, extra))
        yield Batch(rows, emb, logits, ok, extra)  # type: ignore[arg-type]


def _blank(a: np.ndarray | None, ok: np.ndarray) -> np.ndarray | None:
    if a is None:
        return None
    a = a.copy()
    a[~ok] = np.nan
    return a


def infer_table(extractor: Extractor, table: pd.DataFrame, source: ImageSource, *, errors: str = "raise",
                tta: str | None = None, batch_size: int = 64, num_workers: int = 2, progress: bool = False,
                description: str = "embedding", branch: Extractor | None = None) -> Outputs:
    """Embed (and classify, with a head) every row of ``table``; see the module doc for ``errors``."""
    if errors not in ERROR_MODES:
        raise ValueError(f"errors must be one of {ERROR_MODES}")
    start = time.perf_counter()
    parts: list[Batch] = []
    failed: list[int] = []
    for b in iter_table(extractor, table, source, tta=tta, batch_size=batch_size, num_workers=num_workers,
                        progress=progress, description=description, branch=branch):
        failed += b.rows[~b.ok].tolist()
        parts.append(b)
    if failed and errors == "raise":
        raise unreadable_error(table, source, failed)
    emb = np.concatenate([b.embeddings for b in parts]) if parts else np.zeros((0, extractor.dim), np.float32)
    logits = np.concatenate([b.logits for b in parts]) if parts and parts[0].logits is not None else None
    extra = np.concatenate([b.branch for b in parts]) if parts and branch is not None else None
    return Outputs(emb, logits, time.perf_counter() - start, failed, extra)


def infer_images(extractor: Extractor, images: Sequence[Image.Image],
                 tta: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed in-memory images (uploads, CLI photos): ``(embeddings [N, D], logits [N, C] | None)``."""
    if not images:
        raise ValueError("no images to embed")
    transform = input_transform(extractor.pre, tta)
    return forward(extractor, torch.stack([transform(img.convert("RGB")) for img in images]))


def unreadable_error(table: pd.DataFrame, source: ImageSource, rows: list[int]) -> H2FError:
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
