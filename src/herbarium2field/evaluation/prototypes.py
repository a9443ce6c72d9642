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
"""

from __future__ import annotations

from typing import Literal

import numpy as np

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


def build_prototypes(emb: np.ndarray, labels: np.ndarray, domains: np.ndarray, num_classes: int, *,
                     source: Source = "both", field_weight: float = 0.5, shift: float = 1.0) -> np.ndarray:
    """Prototypes ``[C, D]`` (L2-normalised; a class without any training image gets a zero row).

    ``domains`` uses 0 = herbarium, 1 = field. ``shift`` scales the herbarium→field offset (``shifted``).
    ``calibrated`` needs validation photos: use :func:`calibrate_shift`, then ``shifted`` with its choice.
    """
    if source not in SOURCES or source == "calibrated":
        raise ValueError(f"unknown prototype source {source!r}; choose from {', '.join(SOURCES[:-1])}")
    herb, n_herb = class_means(emb[domains == 0], labels[domains == 0], num_classes)
    field, n_field = class_means(emb[domains == 1], labels[domains == 1], num_classes)
    if source == "both":
        both, _ = class_means(emb, labels, num_classes)
        return _normalise(both)
    if source == "herbarium":
        return _normalise(np.where((n_herb > 0)[:, None], herb, field))
    if source == "field":
        return _normalise(np.where((n_field > 0)[:, None], field, herb))
    if source == "weighted":
        return _from_means(herb, field, n_herb > 0, n_field > 0, field_weight, shift=0.0)
    return _from_means(herb, field, n_herb > 0, n_field > 0, field_weight, shift=shift)


def _from_means(herb: np.ndarray, field: np.ndarray, has_herb: np.ndarray, has_field: np.ndarray,
                field_weight: float, shift: float, offset: np.ndarray | None = None) -> np.ndarray:
    """``weighted`` prototypes for paired species, shifted herbarium means for herbarium-only ones."""
    paired = has_field & has_herb
    mixed = np.where(paired[:, None], (1 - field_weight) * _normalise(herb) + field_weight * _normalise(field),
                     np.where(has_field[:, None], field, herb))
    if shift == 0.0 or not paired.any():
        return _normalise(mixed)
    if offset is None:
        offset = (_normalise(field[paired]) - _normalise(herb[paired])).mean(axis=0)
    return _normalise(np.where((has_herb & ~has_field)[:, None], _normalise(herb) + shift * offset, mixed))


def calibrate_shift(emb: np.ndarray, labels: np.ndarray, domains: np.ndarray, val_emb: np.ndarray,
                    val_labels: np.ndarray, num_classes: int, *,
                    grid: tuple[tuple[float, float], ...] = CALIBRATION_GRID) -> dict[str, object]:
    """Choose ``field_weight`` and ``shift`` for ``shifted`` prototypes on validation field photos.

    Each paired species with validation photos is in turn made herbarium-only (its training photos and
    its share of the mean offset removed); its validation photos then measure a herbarium-only species and
    the other species' photos measure the paired ones. The score weighs the two by the share of
    herbarium-only species among all classes, the mix a test set of field photos of every species has.
    Fewer than two such species: the ``shifted`` defaults, flagged as not calibrated.
    """
    from herbarium2field.evaluation.metrics import ranks

    herb, n_herb = class_means(emb[domains == 0], labels[domains == 0], num_classes)
    field, n_field = class_means(emb[domains == 1], labels[domains == 1], num_classes)
    has_herb, has_field = n_herb > 0, n_field > 0
    paired = has_herb & has_field
    held = [c for c in np.flatnonzero(paired) if np.any(val_labels == c)]
    default = {"field_weight": grid[0][0], "shift": grid[0][1], "calibrated": False, "held_out_species": len(held)}
    if len(held) < 2:
        return default
    known = val_labels >= 0
    val_emb, val_labels = val_emb[known], val_labels[known]
    diffs = _normalise(field) - _normalise(herb)
    total, n_paired = diffs[paired].sum(axis=0), int(paired.sum())
    share = float((has_herb & ~has_field).sum() + 1) / float((has_herb | has_field).sum())
    results = []
    for fw, alpha in grid:
        wo, wp = [], []
        for c in held:
            hf = has_field.copy()
            hf[c] = False
            offset = (total - diffs[c]) / (n_paired - 1)
            protos = _from_means(herb, field, has_herb, hf, fw, alpha, offset=offset)
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


def run_prototypes(run, *, source: str = "shifted", field_weight: float = 0.5, data=None,  # type: ignore[no-untyped-def]
                   progress: bool = False, allow_missing: bool = False, num_workers: int = 2) -> np.ndarray:
    """Prototypes of a run from its own training split (embeddings cached in the run directory).

    ``calibrated`` also embeds the run's validation split and records its choice in
    ``prototype_calibration.json`` in the run directory.
    """
    from pathlib import Path

    from herbarium2field.evaluation.outputs import split_outputs, split_params
    from herbarium2field.io import write_json

    kw = {"data": data, "progress": progress, "allow_missing": allow_missing, "num_workers": num_workers}
    train = split_outputs(run, "train", **kw)
    n = len(train.card.class_ids)
    if source != "calibrated":
        return build_prototypes(train.embeddings, train.labels, train.domains, n, source=source,  # type: ignore[arg-type]
                                field_weight=field_weight)
    params = split_params(Path(run), train.card)
    if params is None or params.field_fraction <= 0:  # no validation photos to calibrate on: plain "shifted"
        empty = np.zeros((0, train.embeddings.shape[1]), dtype=train.embeddings.dtype)
        choice = calibrate_shift(train.embeddings, train.labels, train.domains, empty, np.zeros(0, int), n)
        choice["note"] = "the run holds no validation field photos: the plain 'shifted' setting is used"
    else:
        val = split_outputs(run, "val", **kw)
        choice = calibrate_shift(train.embeddings, train.labels, train.domains, val.embeddings, val.labels, n)
    write_json(Path(run) / "prototype_calibration.json", choice)
    return build_prototypes(train.embeddings, train.labels, train.domains, n, source="shifted",
                            field_weight=float(choice["field_weight"]), shift=float(choice["shift"]))  # type: ignore[arg-type]
