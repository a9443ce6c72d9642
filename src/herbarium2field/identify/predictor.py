"""One interface over every trained model: images in, ``(embeddings, scores)`` out.

``load_predictor(run, backend="torch"|"onnx")`` reads a run directory once and returns a
:class:`Predictor` whose ``predict(images)`` gives L2-normalised embeddings ``[N, D]`` (what the herbarium
gallery is searched with) and class scores ``[N, C]`` in ``card.class_ids`` order (logits of a network
head; for ArcFace ``s·cos θ``; for a classic run, the classifier's scores).

Concurrency: one model per process, shared by all requests; forward passes are serialised by a lock and
each one uses every core (torch intra-op threads, or ONNX Runtime's intra-op pool). On a CPU one forward
already saturates the cores, so two at once only contend for them and double peak memory: with the lock
the latency under load is queueing plus one fast forward, for the same throughput. Decoding and
preprocessing (the other half of a request's CPU time) run outside the lock, in parallel. To use more
machines' worth of cores, run more server processes (each loads its own copy).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from herbarium2field.data.cache import ImageSource
from herbarium2field.data.transforms import eval_transform
from herbarium2field.errors import H2FError
from herbarium2field.models.backbones import Preprocessing
from herbarium2field.models.predict import default_device, embed_and_score, embed_batch, table_batches
from herbarium2field.system import usable_cores
from herbarium2field.training.run_dir import ModelCard, RunPaths

BACKENDS = ("torch", "onnx")


class Predictor(Protocol):
    """What identification, the gallery and the server need from a model."""

    card: ModelCard
    pre: Preprocessing
    backend: str
    score_kind: str  # "logits" (networks) or "probabilities" (classic classifiers)

    def predict(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings [N, D] L2-normalised, scores [N, C] in card.class_ids order)``."""
        ...

    def predict_table(
        self,
        table: pd.DataFrame,
        source: ImageSource,
        *,
        batch_size: int = 32,
        num_workers: int = 2,
        progress: bool = False,
        description: str = "embedding",
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same for every row of a dataset table (images read through ``source``), batched; rows whose
        image cannot be read come back as NaN (never as another image's outputs)."""
        ...


class _Base:
    """Shared plumbing: preprocessing, the lock, batched table inference with a progress bar."""

    backend = "torch"
    score_kind = "logits"

    def __init__(self, card: ModelCard, pre: Preprocessing) -> None:
        self.card = card
        self.pre = pre
        self.transform = eval_transform(pre)
        self._lock = threading.Lock()

    def _forward(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        if not images:
            raise ValueError("no images to predict")
        x = torch.stack([self.transform(img.convert("RGB")) for img in images])  # outside the lock
        with self._lock:
            return self._forward(x)

    def predict_table(
        self,
        table: pd.DataFrame,
        source: ImageSource,
        *,
        batch_size: int = 32,
        num_workers: int = 2,
        progress: bool = False,
        description: str = "embedding",
    ) -> tuple[np.ndarray, np.ndarray]:
        embs: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for x, rows in table_batches(
            table,
            source,
            self.transform,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            description=description,
        ):
            with self._lock:
                e, s = self._forward(x)
            bad = (rows < 0).numpy()  # unreadable image: the loader flags it, we blank its outputs
            if bad.any():
                e, s = e.copy(), s.copy()
                e[bad], s[bad] = np.nan, np.nan
            embs.append(e)
            scores.append(s)
        if not embs:
            return (
                np.zeros((0, self.card.embedding_dim), np.float32),
                np.zeros((0, len(self.card.class_ids)), np.float32),
            )
        return np.concatenate(embs), np.concatenate(scores)


class TorchNetworkPredictor(_Base):
    """An :class:`~herbarium2field.models.network.H2FNet` from ``h2f train`` (eager PyTorch)."""

    def __init__(self, net: nn.Module, card: ModelCard, pre: Preprocessing) -> None:
        super().__init__(card, pre)
        self.device = default_device()
        self.net = net.to(self.device).eval()

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        emb, logits = embed_and_score(self.net, x.to(self.device))  # as in evaluation
        assert logits is not None  # an H2FNet always has a head
        return emb, logits


class TorchClassicPredictor(_Base):
    """A classic run (``h2f fit-classic``): its frozen backbone embeds, the fitted classifier scores."""

    score_kind = "probabilities"

    def __init__(self, backbone: nn.Module, classic: Any, card: ModelCard, pre: Preprocessing) -> None:
        super().__init__(card, pre)
        self.device = default_device()
        self.net = backbone.to(self.device).eval()
        self.classic = classic

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        # embed_batch: exactly how the feature cache was made
        emb = embed_batch(self.net, x.to(self.device)).cpu().numpy().astype(np.float32)
        return emb, _classic_scores(self.classic, emb)


class OnnxPredictor(_Base):
    """The same model exported by ``h2f export --format onnx``, run by ONNX Runtime on the CPU.

    A network's ONNX graph computes embeddings and scores; a classic run's graph computes the
    L2-normalised backbone embeddings and the fitted classifier scores them in Python.
    """

    backend = "onnx"

    def __init__(self, session: Any, card: ModelCard, pre: Preprocessing, classic: Any = None) -> None:
        super().__init__(card, pre)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.classic = classic
        if classic is not None:
            self.score_kind = "probabilities"

    def _forward(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        outs = self.session.run(None, {self.input_name: x.numpy().astype(np.float32, copy=False)})
        emb = np.asarray(outs[0], np.float32)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        if self.classic is not None:
            return emb, _classic_scores(self.classic, emb)
        return emb, np.asarray(outs[1], np.float32)


class PrototypePredictor:
    """Wraps a network predictor so species are ranked by ``s·cos(embedding, class prototype)`` — the run's
    ``inference.mode: prototype`` (e.g. shifted prototypes, which help species without field photos) —
    instead of the head. ``s`` is the ArcFace scale, so the scores read like the head's logits."""

    score_kind = "logits"

    def __init__(self, inner: Predictor, prototypes: np.ndarray, scale: float) -> None:
        self.inner, self.prototypes, self.scale = inner, prototypes.astype(np.float32), float(scale)
        self.card, self.pre, self.backend = inner.card, inner.pre, inner.backend

    def _scores(self, emb: np.ndarray) -> np.ndarray:
        from herbarium2field.evaluation.prototypes import prototype_scores

        scores = self.scale * prototype_scores(np.nan_to_num(emb), self.prototypes)
        scores[np.isnan(emb).any(axis=1)] = np.nan  # an unreadable image stays unscored
        return scores

    def predict(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        emb, _ = self.inner.predict(images)
        return emb, self._scores(emb)

    def predict_table(self, table: pd.DataFrame, source: ImageSource, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        emb, _ = self.inner.predict_table(table, source, **kwargs)
        return emb, self._scores(emb)


def _with_inference_mode(run: Path, predictor: Predictor) -> Predictor:
    """Apply the run's ``inference:`` config (prototype ranking) to a network predictor."""
    from herbarium2field.evaluation.outputs import inference_config

    inf = inference_config(run)
    if predictor.card.kind != "network" or inf.mode != "prototype":
        return predictor
    from herbarium2field.config import load_config
    from herbarium2field.evaluation.prototypes import run_prototypes

    protos = run_prototypes(run, source=inf.prototype_source, field_weight=inf.field_weight)
    return PrototypePredictor(predictor, protos, load_config(RunPaths(run).config).model.arcface.scale)


def _classic_scores(classic: Any, emb: np.ndarray) -> np.ndarray:
    """The classifier's probabilities for L2-normalised embeddings of new photos (domain "field")."""
    return np.asarray(classic.scores(emb, "field"), dtype=np.float32)


def set_threads(threads: int | None) -> int:
    """Intra-op threads for torch (the process-wide setting); returns the number in use."""
    n = threads or usable_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def load_predictor(run: str | Path, backend: str = "torch", *, threads: int | None = None) -> Predictor:
    """Load a run's model once: ``torch`` (eager) or ``onnx`` (``export/model.onnx``, ONNX Runtime).

    ``threads``: intra-op threads (default: every core available to this process).
    """
    if backend not in BACKENDS:
        raise H2FError(f"unknown backend {backend!r}: use torch or onnx")
    run = Path(run)
    card = ModelCard.load(RunPaths(run).card)
    pre = Preprocessing.from_dict(card.preprocessing)
    n = set_threads(threads)
    if backend == "onnx":
        from herbarium2field.identify.onnx_export import load_session

        session = load_session(run, card, threads=n)
        classic = _load_classic(run) if card.kind == "classic" else None
        return _with_inference_mode(run, OnnxPredictor(session, card, pre, classic))
    if card.kind == "network":
        from herbarium2field.training.run_dir import load_network

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net, card, _ = load_network(run)
        return _with_inference_mode(run, TorchNetworkPredictor(net, card, pre))
    if card.kind == "classic":
        classic = _load_classic(run)
        backbone, classic_pre = classic.backbone()
        return TorchClassicPredictor(backbone, classic, card, classic_pre or pre)
    raise H2FError(f"unknown model kind {card.kind!r} in the model card", path=RunPaths(run).card)


def _load_classic(run: Path) -> Any:
    try:
        from herbarium2field.features.classic import load_classic
    except ImportError:
        raise H2FError(
            "this run holds a classic model, but this installation has no classic-model support "
            "(herbarium2field.features.classic)",
            path=run,
        ) from None
    return load_classic(run)
