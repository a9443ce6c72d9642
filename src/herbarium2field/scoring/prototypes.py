"""Prototype classification: rank species by cosine similarity to class prototypes built from training
embeddings. The original project's best mode; here also the home of domain-aligned prototypes.

Prototype sources (``source``):

- ``herbarium`` / ``field`` / ``both``: mean L2-normalised embedding of that domain's training images
  (``field`` falls back to herbarium for species without photos).
- ``weighted``: ``(1 - w)·herbarium mean + w·field mean`` where a species has photos, herbarium mean otherwise.
- ``shifted``: species without field photos get their herbarium mean moved by the average herbarium→field
  offset measured on the species that have both (``field mean − herbarium mean``), so their prototype
  lands where their photos are expected to be; species with photos use the ``weighted`` prototype.
- ``calibrated``: ``shifted`` with its two knobs (the field weight of paired species and the strength of the
  shift) chosen on the run's validation photos by leaving each paired species' field photos out in turn, so
  that it plays a herbarium-only species (:func:`calibrate_shift`). How far a shift helps depends on the data:
  on the synthetic benchmarks a full shift lifts herbarium-only species, on the real sample it costs the
  species with photos and gains nothing; the calibration measures that trade-off instead of assuming it.

Every source is a function of four numbers per class — the mean training embedding of each domain and
the image counts (:class:`ClassMeans`) — so a run stores those once (``prototypes.npz``) and any source,
field weight or shift strength is computed at inference without the training images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from herbarium2field.scoring.metrics import ranks

Source = Literal["herbarium", "field", "both", "weighted", "shifted", "calibrated"]
SOURCES: tuple[str, ...] = ("herbarium", "field", "both", "weighted", "shifted", "calibrated")
#: (field weight, shift strength) candidates of the calibration; the first best one wins, so the plain
#: ``shifted`` setting (0.5, 1.0) is listed first and kept on ties.
CALIBRATION_GRID: tuple[tuple[float, float], ...] = ((0.5, 1.0),) + tuple(
    (w, a) for w in (0.0, 0.25, 0.5, 0.75, 1.0) for a in (0.0, 0.5, 1.0, 1.5) if (w, a) != (0.5, 1.0))


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_means(emb: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean of L2-normalised embeddings and the count per class (0 → a zero row)."""
    emb = _normalise(emb.astype(np.float64))
    sums = np.zeros((num_classes, emb.shape[1]))
    valid = labels >= 0
    np.add.at(sums, labels[valid], emb[valid])
    counts = np.bincount(labels[valid], minlength=num_classes)
    return sums / np.maximum(counts, 1)[:, None], counts


@dataclass
class ClassMeans:
    """Per class: mean L2-normalised training embedding of the herbarium sheets and of the field photos,
    and how many of each. Everything prototypes need."""

    herbarium: np.ndarray  # [C, D] float64 (zero row: no sheet)
    field: np.ndarray  # [C, D]
    n_herbarium: np.ndarray  # [C] int
    n_field: np.ndarray  # [C] int

    @classmethod
    def from_embeddings(cls, emb: np.ndarray, labels: np.ndarray, domains: np.ndarray,
                        num_classes: int) -> ClassMeans:
        """``domains``: 0 = herbarium, 1 = field; rows with label -1 or a NaN embedding are left out."""
        ok = (labels >= 0) & ~np.isnan(emb).any(axis=1)
        emb, labels, domains = emb[ok], labels[ok], domains[ok]
        herb, n_herb = class_means(emb[domains == 0], labels[domains == 0], num_classes)
        field, n_field = class_means(emb[domains == 1], labels[domains == 1], num_classes)
        return cls(herb, field, n_herb, n_field)

    @property
    def num_classes(self) -> int:
        return len(self.n_herbarium)

    @property
    def dim(self) -> int:
        return int(self.herbarium.shape[1])

    def without_field(self, classes: np.ndarray | list[int]) -> ClassMeans:
        """The same means with the field photos of ``classes`` removed (they become herbarium-only)."""
        field, n_field = self.field.copy(), self.n_field.copy()
        field[classes], n_field[classes] = 0.0, 0
        return ClassMeans(self.herbarium, field, self.n_herbarium, n_field)


def prototypes(means: ClassMeans, source: Source = "both", *, field_weight: float = 0.5,
               shift: float = 1.0, offset: np.ndarray | None = None) -> np.ndarray:
    """Prototypes ``[C, D]`` (L2-normalised; a class without any training image gets a zero row).

    ``shift`` scales the herbarium→field offset (``shifted``); ``offset`` replaces the offset measured on the
    paired species (e.g. one computed without a held-out species). ``calibrated`` needs validation photos:
    use :func:`calibrate_shift`, then ``shifted`` with its choice.
    """
    if source not in SOURCES or source == "calibrated":
        raise ValueError(f"unknown prototype source {source!r}; choose from {', '.join(SOURCES[:-1])}")
    herb, field = means.herbarium, means.field
    has_herb, has_field = means.n_herbarium > 0, means.n_field > 0
    if source == "both":
        n_h, n_f = means.n_herbarium[:, None], means.n_field[:, None]
        return _normalise((n_h * herb + n_f * field) / np.maximum(n_h + n_f, 1))
    if source == "herbarium":
        return _normalise(np.where(has_herb[:, None], herb, field))
    if source == "field":
        return _normalise(np.where(has_field[:, None], field, herb))
    paired = has_field & has_herb
    mixed = np.where(paired[:, None], (1 - field_weight) * _normalise(herb) + field_weight * _normalise(field),
                     np.where(has_field[:, None], field, herb))
    if source == "weighted" or shift == 0.0 or not paired.any():
        return _normalise(mixed)
    if offset is None:
        offset = mean_offset(means)
    return _normalise(np.where((has_herb & ~has_field)[:, None], _normalise(herb) + shift * offset, mixed))


def mean_offset(means: ClassMeans) -> np.ndarray:
    """The average herbarium→field offset (normalised field mean − normalised sheet mean) of paired species."""
    paired = (means.n_herbarium > 0) & (means.n_field > 0)
    if not paired.any():
        return np.zeros(means.dim)
    return (_normalise(means.field[paired]) - _normalise(means.herbarium[paired])).mean(axis=0)


def build_prototypes(emb: np.ndarray, labels: np.ndarray, domains: np.ndarray, num_classes: int, *,
                     source: Source = "both", field_weight: float = 0.5, shift: float = 1.0) -> np.ndarray:
    """:func:`prototypes` straight from training embeddings (``domains``: 0 = herbarium, 1 = field)."""
    return prototypes(ClassMeans.from_embeddings(emb, labels, domains, num_classes), source,
                      field_weight=field_weight, shift=shift)


def calibrate_shift(means: ClassMeans, val_emb: np.ndarray, val_labels: np.ndarray, *,
                    grid: tuple[tuple[float, float], ...] = CALIBRATION_GRID) -> dict[str, object]:
    """Choose ``field_weight`` and ``shift`` for ``shifted`` prototypes on validation field photos.

    Each paired species with validation photos is in turn made herbarium-only (its training photos and
    its share of the mean offset removed); its validation photos then measure a herbarium-only species and
    the other species' photos measure the paired ones. The score weighs the two by the share of
    herbarium-only species among all classes, the mix a test set of field photos of every species has.
    Fewer than two such species: the ``shifted`` defaults, flagged as not calibrated.
    """
    has_herb, has_field = means.n_herbarium > 0, means.n_field > 0
    paired = has_herb & has_field
    held = [c for c in np.flatnonzero(paired) if np.any(val_labels == c)]
    default = {"field_weight": grid[0][0], "shift": grid[0][1], "calibrated": False, "held_out_species": len(held)}
    if len(held) < 2:
        return default
    known = (val_labels >= 0) & ~np.isnan(val_emb).any(axis=1)
    val_emb, val_labels = val_emb[known], val_labels[known]
    diffs = _normalise(means.field) - _normalise(means.herbarium)
    total, n_paired = diffs[paired].sum(axis=0), int(paired.sum())
    share = float((has_herb & ~has_field).sum() + 1) / float((has_herb | has_field).sum())
    results = []
    for fw, alpha in grid:
        wo, wp = [], []
        for c in held:
            protos = prototypes(means.without_field([c]), "shifted", field_weight=fw, shift=alpha,
                                offset=(total - diffs[c]) / (n_paired - 1))
            hit = ranks(prototype_scores(val_emb, protos), val_labels) <= 1
            wo.append(hit[val_labels == c].mean())
            others = (val_labels != c) & paired[val_labels]
            if others.any():
                wp.append(hit[others].mean())
        score = share * float(np.mean(wo)) + (1 - share) * float(np.mean(wp) if wp else 0.0)
        results.append({"field_weight": fw, "shift": alpha, "score": round(score, 4),
                        "held_out_top1": round(float(np.mean(wo)), 4),
                        "paired_top1": round(float(np.mean(wp)), 4) if wp else None})
    best = max(results, key=lambda r: r["score"])  # max keeps the first of equal scores: the defaults
    return {"field_weight": best["field_weight"], "shift": best["shift"], "calibrated": True,
            "held_out_species": len(held), "herbarium_only_share": round(share, 4), "grid": results}


def prototype_scores(query: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[N, C]``; classes without a prototype get -inf (never ranked above a real one)."""
    sims = _normalise(query.astype(np.float64)) @ prototypes.T
    empty = ~np.any(prototypes != 0, axis=1)
    sims[:, empty] = -np.inf
    return sims.astype(np.float32)
