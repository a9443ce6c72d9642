"""The one way to load a run's model: :func:`load_model` reads the card once and returns a :class:`RunModel`
that turns images into ``(embeddings, scores)`` the way the run says it should rank species.

It dispatches on the kind of run (a trained network from ``h2f train``, a frozen backbone + classical
classifier from ``h2f fit-classic``) and the backend (eager PyTorch, or the ONNX export run by ONNX
Runtime), and applies the run's inference choice (``inference.json``: the head, or class prototypes). A
deployable bundle (``h2f export --format bundle``) loads the same way, with the ONNX backend.

Concurrency: one model per process, shared by all requests; forward passes are serialised by a lock and
each one uses every core (torch intra-op threads, or ONNX Runtime's pool). On a CPU one forward already
saturates the cores, so two at once only contend and double peak memory. Decoding and preprocessing (the
other half of a request's CPU time) run outside the lock, in parallel.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import joblib
import numpy as np
import pandas as pd
import torch
from PIL import Image

from herbarium2field.config import ExperimentConfig, load_config
from herbarium2field.data.cache import ImageSource
from herbarium2field.data.transforms import Preprocessing
from herbarium2field.errors import H2FError
from herbarium2field.models.classic_head import ClassicHead
from herbarium2field.models.extractor import Extractor, GreyscaleExtractor, OnnxExtractor, TorchExtractor
from herbarium2field.models.frozen import frozen_from_record
from herbarium2field.models.inference import forward, input_transform, iter_table
from herbarium2field.models.network import H2FNet
from herbarium2field.run.artefacts import Branch, InferenceChoice, load_class_means
from herbarium2field.run.bundle import open_run
from herbarium2field.run.card import ModelCard, outdated, read_card
from herbarium2field.run.fingerprint import check_weights, same_model
from herbarium2field.run.paths import RunPaths
from herbarium2field.scoring.combine import log_probabilities
from herbarium2field.scoring.prototypes import prototype_scores
from herbarium2field.scoring.reserve import reserved_keys, view_scores
from herbarium2field.scoring.taxonomy import lift_congeners
from herbarium2field.system import usable_cores

BACKENDS = ("auto", "torch", "onnx")
#: What the confidence is, per kind of scorer (shown with every identification).
CONFIDENCE = {
    "head": "softmax of the network's logits (ArcFace: s*cos theta; no extra temperature)",
    "classic": "the classifier's probability (predict_proba)",
    "prototype": "softmax of s*cos(photo, class prototype), s = the run's scale",
}


# ---- scorers: embeddings (+ head logits) -> one score per species -----------------------------------------


class Scorer(Protocol):
    name: str  # "head" | "classic" | "prototype"
    kind: str  # "logits" (softmax gives probabilities) or "probabilities"

    def __call__(self, emb: np.ndarray, logits: np.ndarray | None, domain: str | np.ndarray = "field") -> np.ndarray:
        ...


class HeadScorer:
    """The network's own head: its logits (ArcFace: ``s·cos θ`` without margin)."""

    name, kind = "head", "logits"

    def __call__(self, emb: np.ndarray, logits: np.ndarray | None, domain: str | np.ndarray = "field") -> np.ndarray:
        assert logits is not None, "a network extractor always returns logits"
        return logits


class ClassicScorer:
    """A fitted classical classifier over the embeddings (probabilities)."""

    name, kind = "classic", "probabilities"

    def __init__(self, head: ClassicHead) -> None:
        self.head = head

    def __call__(self, emb: np.ndarray, logits: np.ndarray | None, domain: str | np.ndarray = "field") -> np.ndarray:
        return self.head.scores(emb, domain)


class PrototypeScorer:
    """``scale · cos(embedding, class prototype)``: reads like an ArcFace head's logits."""

    name, kind = "prototype", "logits"

    def __init__(self, prototypes: np.ndarray, scale: float) -> None:
        self.prototypes, self.scale = prototypes.astype(np.float32), float(scale)

    def __call__(self, emb: np.ndarray, logits: np.ndarray | None, domain: str | np.ndarray = "field") -> np.ndarray:
        scores = self.scale * prototype_scores(np.nan_to_num(emb), self.prototypes)
        scores[np.isnan(emb).any(axis=1)] = np.nan  # an unreadable image stays unscored
        return scores


# ---- the model ----------------------------------------------------------------------------------------


class GenusLift:
    """Genus sharing on top of another scorer (:func:`~herbarium2field.scoring.taxonomy.lift_congeners`):
    log-probabilities where herbarium-only species get their best congener's minus a margin."""

    name, kind = "genus", "logits"

    def __init__(self, base: Scorer, card: ModelCard, margin: float) -> None:
        self.base, self.margin, self.taxonomy = base, float(margin), card.taxonomy()
        self.herbarium_only = herbarium_only(card)
        self.name = base.name

    def __call__(self, emb: np.ndarray, logits: np.ndarray | None, domain: str | np.ndarray = "field") -> np.ndarray:
        scores = self.base(emb, logits, domain)
        bad = np.isnan(scores).any(axis=1)
        lp = lift_congeners(log_probabilities(np.nan_to_num(scores, nan=0.0), self.base.kind), self.taxonomy,
                            self.herbarium_only, self.margin)
        lp[bad] = np.nan
        return lp


def herbarium_only(card: ModelCard) -> np.ndarray:
    """Bool per class: no field photo of it was seen in training."""
    pairs = set(card.with_pairs)
    return np.array([c not in pairs for c in card.class_ids], dtype=bool)


@dataclass
class Scored:
    """One batch of a run's answers over a table: rows, embeddings, scores, readable flags and, when the
    ranking reserves places, the photos' embeddings for the sheet branch."""

    rows: np.ndarray
    embeddings: np.ndarray
    scores: np.ndarray
    ok: np.ndarray
    branch: np.ndarray | None = None


class RunModel:
    """A run's extractor and its scorers: images in, ``(embeddings [N, D], scores [N, C])`` out; with reserved
    places (``inference.reserve``) also the ranking keys that put herbarium-only species matched to their
    sheets into the top 5 (:mod:`herbarium2field.scoring.reserve`)."""

    def __init__(self, run: Path, card: ModelCard, extractor: Extractor, classifier: Scorer,
                 choice: InferenceChoice | None, backend: str) -> None:
        self.run, self.card, self.extractor, self.backend = run, card, extractor, backend
        self.classifier = classifier  # the head or the fitted classifier
        self.choice = choice
        self.scorer: Scorer = self.scorer_for(choice) if choice is not None else classifier
        self.branch: Branch | None = None
        self.branch_extractor: Extractor | None = None
        if choice is not None and choice.reserve:
            self.use_branch(settings=choice.branch)
        self._lock = threading.Lock()

    @property
    def pre(self) -> Preprocessing:
        return self.extractor.pre

    @property
    def score_kind(self) -> str:
        return self.scorer.kind

    @property
    def confidence(self) -> str:
        return CONFIDENCE[self.scorer.name]

    def scorer_for(self, choice: InferenceChoice) -> Scorer:
        """The scorer of an inference choice (the run's own, or another one to evaluate)."""
        base: Scorer = self.classifier if choice.mode == "classifier" else PrototypeScorer(
            choice.prototypes(load_class_means(self.run, self.card)), choice.scale)
        return GenusLift(base, self.card, choice.genus_insert) if choice.genus_insert is not None else base

    def use_branch(self, branch: Branch | None = None, settings: dict[str, Any] | None = None) -> None:
        """Load (or take) the sheet views of the herbarium-only branch and the photo's view of them."""
        self.branch = branch or Branch.load(self.run, self.card, settings or {})
        if self.branch is None:
            raise outdated(self.run, "branch-*.npz (the sheet views its reserved places rank by)")
        grey = self.branch.settings.get("colour", "grey") == "grey"
        self.branch_extractor = GreyscaleExtractor(self.extractor) if grey else self.extractor

    @property
    def reserve(self) -> int:
        return self.choice.reserve if self.choice is not None and self.branch is not None else 0

    def branch_sims(self, branch_emb: np.ndarray) -> np.ndarray:
        """``[N, C]`` best cosine of each photo (as the branch sees it) to each species' sheet views."""
        assert self.branch is not None
        return view_scores(branch_emb, self.branch.views, self.branch.view_class, self.card.num_classes)

    def keys(self, scores: np.ndarray, branch_emb: np.ndarray | None, reserve: int | None = None) -> np.ndarray | None:
        """Ranking keys with ``reserve`` places (default: the run's) for herbarium-only species; None without."""
        k = self.reserve if reserve is None else reserve
        if not k or self.branch is None or branch_emb is None:
            return None
        keys = reserved_keys(np.nan_to_num(scores, nan=-np.inf), self.branch_sims(branch_emb),
                             herbarium_only(self.card), k)
        keys[np.isnan(scores).any(axis=1)] = np.nan
        return keys

    def predict(self, images: Sequence[Image.Image], tta: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        emb, scores, _ = self.predict_with_branch(images, tta)
        return emb, scores

    def predict_with_branch(self, images: Sequence[Image.Image], tta: str | None = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(embeddings, scores, branch embeddings | None)`` of in-memory photos."""
        if not images:
            raise ValueError("no images to predict")
        transform = input_transform(self.pre, tta)
        x = torch.stack([transform(img.convert("RGB")) for img in images])  # outside the lock
        with self._lock:
            emb, logits = forward(self.extractor, x)
            branch = forward(self.branch_extractor, x)[0] if self.branch_extractor is not None else None
        return emb, self.scorer(emb, logits), branch

    def iter_table(self, table: pd.DataFrame, source: ImageSource, **kwargs: Any) -> Iterator[Scored]:
        """The answers per batch over a dataset table (NaN where unreadable)."""
        branch = _Locked(self.branch_extractor, self._lock) if self.branch_extractor is not None else None
        for b in iter_table(_Locked(self.extractor, self._lock), table, source, branch=branch, **kwargs):
            yield Scored(b.rows, b.embeddings, self.scorer(b.embeddings, b.logits), b.ok, b.branch)

    def predict_table(self, table: pd.DataFrame, source: ImageSource, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and scores of every row of a dataset table, batched; unreadable rows come back as NaN."""
        embs, scores = [], []
        for b in self.iter_table(table, source, **kwargs):
            embs.append(b.embeddings)
            scores.append(b.scores)
        if not embs:
            return np.zeros((0, self.extractor.dim), np.float32), np.zeros((0, self.card.num_classes), np.float32)
        return np.concatenate(embs), np.concatenate(scores)


class _Locked:
    """An extractor whose forward passes take the model's lock (batch loading stays outside it)."""

    def __init__(self, inner: Extractor, lock: threading.Lock) -> None:
        self.inner, self.lock, self.pre = inner, lock, inner.pre

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def num_classes(self) -> int | None:
        return self.inner.num_classes

    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        with self.lock:
            return self.inner(x)


def load_model(run: str | Path, backend: str = "auto", *, threads: int | None = None, precision: str = "auto",
               card: ModelCard | None = None, require_choice: bool = True) -> RunModel:
    """Load a run's (or bundle's) model once. ``backend``: ``torch`` (eager), ``onnx`` (``export/model.onnx``)
    or ``auto`` (ONNX for a bundle, else torch); ``threads``: intra-op threads (default: every usable core).

    ``require_choice=False`` loads a run whose inference artefacts are not written yet (while they are made).
    """
    if backend not in BACKENDS:
        raise H2FError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    run = open_run(Path(run))
    paths = RunPaths(run)
    card = card or read_card(run)
    if backend == "auto":
        backend = "onnx" if paths.is_bundle else "torch"
    n = set_threads(threads)
    if backend == "onnx":
        extractor: Extractor = _onnx_extractor(run, card, threads=n)
    elif paths.is_bundle:
        raise H2FError("a bundle holds the ONNX model only", path=run, hint="use --backend onnx (or auto)")
    elif card.kind == "network":
        net, _ = load_network(run, card=card)
        extractor = TorchExtractor(net, Preprocessing.from_dict(card.preprocessing), precision=precision)
    elif card.kind == "classic":
        extractor = classic_backbone(card, precision=precision)
    else:
        raise H2FError(f"unknown model kind {card.kind!r} in the model card", path=paths.card)
    classifier: Scorer = ClassicScorer(load_classic_head(run, card)) if card.kind == "classic" else HeadScorer()
    choice = InferenceChoice.load(run, card) if require_choice or paths.inference.is_file() else None
    return RunModel(run, card, extractor, classifier, choice, backend)


def load_network(run: str | Path, *, card: ModelCard | None = None, checkpoint: str = "best"
                 ) -> tuple[H2FNet, ExperimentConfig]:
    """Rebuild a trained :class:`H2FNet` (eval mode) and its config from the checkpoint (no weights fetched)."""
    run = Path(run)
    paths = RunPaths(run)
    card = card or read_card(run)
    if card.kind != "network":
        raise H2FError(f"this run holds a {card.kind} model, not a network", path=run)
    if not paths.config.is_file():
        raise H2FError("the run has no config.yaml: cannot rebuild its network", path=run,
                       hint="a bundle has no checkpoint: use --backend onnx")
    cfg = load_config(paths.config)
    ckpt = paths.checkpoints / f"{checkpoint}.ckpt"
    if checkpoint == "best":
        ckpt = check_weights(run, card) if card.fingerprint else paths.root / card.checkpoint
    if not ckpt.is_file():
        raise H2FError("no checkpoint in this run", path=paths.checkpoints,
                       hint="train it to the end, or resume it with `h2f train --resume`")
    net = H2FNet(cfg.model, card.num_classes, load_weights=False)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise H2FError(f"cannot read checkpoint: {exc}", path=ckpt) from None
    prefix = "net."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        missing, _ = net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                                         strict=False)
    if missing:
        raise H2FError(f"checkpoint lacks {len(missing)} tensors (e.g. {missing[0]})", path=ckpt)
    return net.eval(), cfg


def classic_backbone(card: ModelCard, *, precision: str = "auto") -> Extractor:
    """The frozen network a classic run's features were made with (weights checked against the record)."""
    record = card.model["features_spec"]
    source = record.get("source") or {}
    if source.get("kind") == "run":  # features from a trained run's embedding
        return load_model(source["run"], "torch", precision=precision, require_choice=False).extractor
    return frozen_from_record(record, precision=precision).extractor


def load_classic_head(run: Path, card: ModelCard) -> ClassicHead:
    """The fitted alignment + classifier of a classic run (``model.joblib``)."""
    f = RunPaths(run).classifier
    if not f.is_file():
        raise H2FError(f"{f.name} is missing from this run", path=run, hint="refit with `h2f fit-classic`")
    if card.fingerprint and not RunPaths(run).is_bundle:
        check_weights(run, card)
    try:
        blob = joblib.load(f)
        return ClassicHead(blob["classifier"], blob["alignment"], card.class_ids)
    except H2FError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling can fail in many ways
        raise H2FError(f"cannot read the fitted model ({type(exc).__name__}: {exc})", path=f,
                       hint="refit with `h2f fit-classic` (files from another scikit-learn version may not load)"
                       ) from None


def _onnx_extractor(run: Path, card: ModelCard, *, threads: int) -> Extractor:
    """The run's ONNX export, refused when it was made from another checkpoint."""
    paths = RunPaths(run)
    if not paths.onnx.is_file() or not paths.onnx_meta.is_file():
        raise H2FError("this run has no ONNX export yet", path=paths.onnx,
                       hint=f"create it with `h2f export {run} --format onnx`, or use --backend torch")
    try:
        meta = json.loads(paths.onnx_meta.read_text())
    except (OSError, json.JSONDecodeError):
        meta = {}
    if not same_model(meta.get("model"), card):
        raise H2FError("the ONNX export is out of date: the run's model changed since it was exported",
                       path=paths.onnx, hint=f"re-export it with `h2f export {run} --format onnx`")
    return OnnxExtractor.from_file(paths.onnx, Preprocessing.from_dict(meta.get("preprocessing")
                                                                        or card.preprocessing), threads=threads)


def set_threads(threads: int | None) -> int:
    """Intra-op threads for torch (the process-wide setting); returns the number in use."""
    n = threads or usable_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
