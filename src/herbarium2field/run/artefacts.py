"""Reading and writing what inference needs from a run: the validation split, class means (prototypes), the
validation photos' outputs, the inference choice and the confidence threshold.

Each file records the fingerprint of the model it was made with; a reader that finds it stale or missing
says which command brings the run up to date, instead of silently recomputing from the training data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from herbarium2field.errors import H2FError
from herbarium2field.hashing import lines_sha256
from herbarium2field.io import atomic_path, write_json
from herbarium2field.run.card import ModelCard, outdated
from herbarium2field.run.fingerprint import model_fingerprint, same_model
from herbarium2field.run.paths import RunPaths
from herbarium2field.scoring.prototypes import ClassMeans, prototypes

FORMAT = 1


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _stale(run: Path, what: str) -> H2FError:
    return H2FError(f"the run's {what} was made with another model (the checkpoint changed since)", path=run,
                    hint=f"rebuild it with `h2f index {run} --data DATASET_ROOT --force`")


# ---- the validation split -------------------------------------------------------------------------------


@dataclass
class Split:
    """The run's validation split: how it was drawn and exactly which training images it holds."""

    field_fraction: float
    herbarium_fraction: float
    seed: int
    val_paths: list[str]

    def save(self, run: Path) -> None:
        write_json(RunPaths(run).split, {"format": FORMAT, **asdict(self)})

    @classmethod
    def load(cls, run: Path) -> Split:
        data = _read_json(RunPaths(run).split)
        if data is None:
            raise outdated(run, "split.json (its validation split)")
        data.pop("format", None)
        return cls(**data)


# ---- class means (every prototype source) ---------------------------------------------------------------


def save_class_means(run: Path, card: ModelCard, means: ClassMeans) -> None:
    with atomic_path(RunPaths(run).prototypes) as tmp, open(tmp, "wb") as f:
        np.savez(f, herbarium=means.herbarium.astype(np.float32), field=means.field.astype(np.float32),
                 n_herbarium=means.n_herbarium, n_field=means.n_field, class_ids=np.asarray(card.class_ids),
                 model=json.dumps(model_fingerprint(card, run)))


def load_class_means(run: Path, card: ModelCard) -> ClassMeans:
    path = RunPaths(run).prototypes
    if not path.is_file():
        raise outdated(run, "prototypes.npz (class means of its training embeddings)")
    with np.load(path) as z:
        if not same_model(json.loads(str(z["model"])), card) or z["class_ids"].tolist() != card.class_ids:
            raise _stale(run, "prototypes.npz")
        return ClassMeans(z["herbarium"].astype(np.float64), z["field"].astype(np.float64),
                          z["n_herbarium"], z["n_field"])


# ---- validation photos' outputs -------------------------------------------------------------------------


@dataclass
class ValidationSet:
    """The run's held-out training images as the model sees them: enough to choose the inference mode and
    re-calibrate the threshold without the dataset."""

    paths: np.ndarray  # [N] str
    labels: np.ndarray  # [N] class index (card order)
    domains: np.ndarray  # [N] 0 = herbarium, 1 = field
    embeddings: np.ndarray  # [N, D] float32 (NaN: unreadable)
    logits: np.ndarray | None  # [N, C] of the network head, None for classic runs

    def save(self, run: Path, card: ModelCard) -> None:
        arrays = {"paths": self.paths.astype(str), "labels": self.labels, "domains": self.domains,
                  "embeddings": self.embeddings.astype(np.float32), "model": json.dumps(model_fingerprint(card, run))}
        if self.logits is not None:
            arrays["logits"] = self.logits.astype(np.float32)
        with atomic_path(RunPaths(run).validation) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, run: Path, card: ModelCard) -> ValidationSet:
        path = RunPaths(run).validation
        if not path.is_file():
            raise outdated(run, "validation.npz (its validation photos' outputs)")
        with np.load(path) as z:
            if not same_model(json.loads(str(z["model"])), card):
                raise _stale(run, "validation.npz")
            return cls(z["paths"], z["labels"], z["domains"], z["embeddings"],
                       z["logits"] if "logits" in z.files else None)

    def subset(self, mask: np.ndarray) -> ValidationSet:
        return ValidationSet(self.paths[mask], self.labels[mask], self.domains[mask], self.embeddings[mask],
                             None if self.logits is None else self.logits[mask])


# ---- the inference choice -------------------------------------------------------------------------------


@dataclass
class InferenceChoice:
    """How a run ranks species, with the evidence for the choice (``inference.json``).

    ``mode``: ``classifier`` (the head or the fitted classifier) or ``prototype`` (cosine to class prototypes
    from :class:`ClassMeans`, times ``scale`` so the scores read like the head's logits).
    """

    mode: str = "classifier"
    prototype_source: str = "both"  # herbarium | field | both | weighted | shifted
    field_weight: float = 0.5
    shift: float = 1.0
    scale: float = 15.0
    label: str = "classifier"  # how evaluation names it: classifier, prototype-<declared source>
    reserve: int = 0  # places of the top 5 for herbarium-only species, ranked by the sheet branch
    branch: dict[str, Any] | None = None  # the sheet views' settings (data.sheet_views.SheetViews)
    genus_insert: float | None = None  # lift herbarium-only species to a congener's log-probability minus this
    declared: dict[str, Any] = field(default_factory=dict)  # what the config asked for
    evidence: dict[str, Any] = field(default_factory=dict)  # how the values were chosen
    model: dict[str, Any] = field(default_factory=dict)

    def save(self, run: Path, card: ModelCard) -> None:
        self.model = model_fingerprint(card, run)
        write_json(RunPaths(run).inference, {"format": FORMAT, **asdict(self)})

    @classmethod
    def load(cls, run: Path, card: ModelCard) -> InferenceChoice:
        data = _read_json(RunPaths(run).inference)
        if data is None:
            raise outdated(run, "inference.json (how it ranks species)")
        data.pop("format", None)
        choice = cls(**data)
        if not same_model(choice.model, card):
            raise _stale(run, "inference.json")
        return choice

    def prototypes(self, means: ClassMeans) -> np.ndarray:
        return prototypes(means, self.prototype_source, field_weight=self.field_weight, shift=self.shift)  # type: ignore[arg-type]

    def describe(self) -> str:
        if self.mode == "classifier":
            text = "ranked by the classifier"
        else:
            extra = f", field weight {self.field_weight:g}, shift {self.shift:g}" \
                if self.prototype_source in ("weighted", "shifted") else ""
            text = f"ranked by {self.prototype_source} prototypes ({self.label}{extra})"
        if self.genus_insert is not None:
            text += f"; herbarium-only species lifted to their congeners' score minus {self.genus_insert:g}"
        if self.reserve:
            text += f"; {self.reserve} of the top 5 places for herbarium-only species matched to their sheets"
        return text


# ---- the herbarium-only branch ---------------------------------------------------------------------------


@dataclass
class Branch:
    """Embeddings of the views of every training sheet (``data.sheet_views``) and the class of each view."""

    views: np.ndarray  # [V, D] float32, L2-normalised
    view_class: np.ndarray  # [V] class index
    settings: dict[str, Any]  # SheetViews settings

    @staticmethod
    def key(settings: dict[str, Any]) -> str:
        return lines_sha256([json.dumps(settings, sort_keys=True)])[:12]

    def save(self, run: Path, card: ModelCard) -> None:
        with atomic_path(RunPaths(run).branch(self.key(self.settings))) as tmp, open(tmp, "wb") as f:
            np.savez(f, views=self.views.astype(np.float32), view_class=self.view_class,
                     settings=json.dumps(self.settings), model=json.dumps(model_fingerprint(card, run)))

    @classmethod
    def load(cls, run: Path, card: ModelCard, settings: dict[str, Any]) -> Branch | None:
        """The run's branch made with ``settings``, or None when it has none."""
        path = RunPaths(run).branch(cls.key(settings))
        if not path.is_file():
            return None
        with np.load(path) as z:
            if not same_model(json.loads(str(z["model"])), card):
                raise _stale(run, path.name)
            return cls(z["views"], z["view_class"], json.loads(str(z["settings"])))


# ---- the confidence threshold ---------------------------------------------------------------------------


def save_calibration(run: Path, card: ModelCard, calibration: dict[str, Any]) -> None:
    write_json(RunPaths(run).calibration, {**calibration, "format": FORMAT, "model": model_fingerprint(card, run)})


def load_calibration(run: Path, card: ModelCard) -> dict[str, Any] | None:
    """The run's threshold, or None when it has none or it belongs to another model."""
    data = _read_json(RunPaths(run).calibration)
    if data is None or data.get("format") != FORMAT or not same_model(data.get("model"), card):
        return None
    return data
