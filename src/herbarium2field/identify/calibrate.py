"""The "no confident match" threshold, chosen on the run's own validation photos (``h2f calibrate``).

Rule: among thresholds ``t`` on the top-1 confidence, take the *lowest* one at which the answers kept
(confidence >= t) are right at least ``target_precision`` of the time (default 90 %), with at least
:data:`MIN_ACCEPTED` photos kept so that one lucky photo cannot set it. The lowest such ``t`` keeps the
most answers (maximal coverage at the target precision). If no threshold reaches the target, nothing is
called confident (``threshold = null``, ``reached = false``): a model that is never 90 % right should say
so. The ranked list is always shown; below the threshold it is marked as uncertain.

Validation photos are the training field photos held out by ``h2f train``: the split is reproduced with
:func:`herbarium2field.data.split.validation_mask` and the run's ``data.val_field_fraction``,
``data.val_herbarium_fraction`` and ``data.val_seed`` (default: ``seed``). Only the field photos are used
(a user sends field photos); if the run held out none, held-out herbarium sheets are used and the
calibration says so. The threshold is calibrated on single photos; for combined photos it is conservative
(agreeing photos raise the combined confidence).

Written to ``runs/<name>/calibration.json`` with the model and data fingerprints; rebuilt only when they
(or the target) change.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from herbarium2field.data.manifest import Dataset, labels_of
from herbarium2field.data.split import validation_mask
from herbarium2field.evaluation.outputs import SplitParams, split_params  # noqa: F401 (re-exported)
from herbarium2field.io import write_json
from herbarium2field.retrieval.freshness import images_fingerprint, model_fingerprint, same_model
from herbarium2field.training.run_dir import ModelCard

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
DEFAULT_TARGET = 0.9
#: What the confidence is, per kind of model score.
CONFIDENCE = {
    "logits": "softmax of the network's logits (ArcFace: s*cos theta; no extra temperature)",
    "probabilities": "the classifier's probability (predict_proba)",
}
#: Fewest validation photos a threshold must keep to count as reaching the target precision.
MIN_ACCEPTED = 5


def choose_threshold(
    confidence: np.ndarray,
    correct: np.ndarray,
    *,
    target: float = DEFAULT_TARGET,
    min_accepted: int = MIN_ACCEPTED,
) -> dict[str, Any]:
    """The lowest confidence threshold whose kept answers reach ``target`` precision (see module doc).

    Returns ``{"threshold", "reached", "precision", "coverage", "accepted", "n", "target_precision"}``;
    when not reached, precision/coverage describe the best-precision threshold that keeps
    ``min_accepted`` photos (for the message).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    n = len(conf)
    out: dict[str, Any] = {
        "target_precision": target,
        "n": n,
        "min_accepted": min_accepted,
        "top1_accuracy": float(ok.mean()) if n else None,
    }
    if n == 0:
        return {**out, "threshold": None, "reached": False, "precision": None, "coverage": 0.0, "accepted": 0}
    order = np.argsort(-conf, kind="stable")
    c_sorted, ok_sorted = conf[order], ok[order]
    kept = np.arange(1, n + 1)
    precision = np.cumsum(ok_sorted) / kept
    # a threshold equal to c_sorted[i] keeps every photo with confidence >= it: the last of a run of ties
    last_of_tie = np.r_[c_sorted[1:] != c_sorted[:-1], True]
    valid = last_of_tie & (kept >= min(min_accepted, n))
    good = valid & (precision >= target)
    if good.any():
        i = int(np.flatnonzero(good)[-1])  # the most photos kept = the lowest threshold
        return {
            **out,
            "threshold": float(c_sorted[i]),
            "reached": True,
            "precision": float(precision[i]),
            "coverage": float(kept[i] / n),
            "accepted": int(kept[i]),
        }
    i = int(np.flatnonzero(valid)[np.argmax(precision[valid])]) if valid.any() else n - 1
    return {
        **out,
        "threshold": None,
        "reached": False,
        "precision": float(precision[i]),
        "coverage": 0.0,
        "accepted": 0,
        "best_precision_threshold": float(c_sorted[i]),
        "best_precision_coverage": float(kept[i] / n),
    }


def validation_rows(ds: Dataset, split: SplitParams | None, card: ModelCard) -> tuple[pd.DataFrame, str]:
    """The run's held-out training images of its species: field photos, else herbarium sheets."""
    train = ds.split("train")
    if split is None:
        return train.iloc[:0], "none"
    mask = validation_mask(
        train,
        field_fraction=split.field_fraction,
        herbarium_fraction=split.herbarium_fraction,
        seed=split.seed,
    )
    val = train[mask & train.class_id.isin(card.class_ids).to_numpy()]
    field = val[val.domain == "field"]
    if len(field):
        return field.reset_index(drop=True), "field"
    return val.reset_index(drop=True), "herbarium"


def load_calibration(run: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(run) / CALIBRATION_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if data.get("format") == FORMAT_VERSION else None


def calibrate_run(
    run: Path,
    predictor: Any,
    ds: Dataset,
    *,
    target: float = DEFAULT_TARGET,
    force: bool = False,
    progress: bool = False,
    batch_size: int = 32,
    num_workers: int = 2,
) -> tuple[dict[str, Any], bool]:
    """Compute (or reuse) the run's calibration; returns ``(calibration, up_to_date)``."""
    from herbarium2field.data.datamodule import image_source
    from herbarium2field.identify.combine import compare_combinations, log_probabilities

    run = Path(run)
    card: ModelCard = predictor.card
    split = split_params(run, card)
    rows, domain = validation_rows(ds, split, card)
    data_fp = images_fingerprint(ds.root, zip(rows.path, rows.class_id.astype(str), strict=True))
    old = load_calibration(run)
    if (
        not force
        and old is not None
        and old.get("target_precision") == target
        and old.get("data", {}).get("fingerprint") == data_fp
        and same_model(old.get("model"), run, card)
    ):
        return old, True
    labels = labels_of(rows, {c: i for i, c in enumerate(card.class_ids)})
    if len(rows):
        source = image_source(ds, cache=True, min_size=card.preprocessing["input_size"])
        _, scores = predictor.predict_table(
            rows,
            source,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            description="validation photos",
        )
        readable = ~np.isnan(scores).any(axis=1)
        unreadable = rows.path[~readable].tolist()
        rows, scores, labels = rows[readable].reset_index(drop=True), scores[readable], labels[readable]
        log_probs = log_probabilities(scores, predictor.score_kind)
        conf, pred = np.exp(log_probs.max(axis=1)), log_probs.argmax(axis=1)
        combination = compare_combinations(log_probs, labels)
    else:
        conf, pred, combination, unreadable = np.zeros(0), np.zeros(0, int), {}, []
    result = choose_threshold(conf, pred == labels, target=target)
    cal = {
        "format": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **result,
        "confidence": CONFIDENCE[predictor.score_kind],
        "rule": f"lowest threshold whose kept validation photos are >= {target:.0%} right at rank 1 "
        f"(at least {MIN_ACCEPTED} kept)",
        "validation": {
            "domain": domain,
            "photos": len(rows),
            "species": int(rows.class_id.nunique()),
            "split": asdict(split) if split else "the run records no validation split: not calibrated",
            "unreadable": unreadable,
        },
        "combination": combination,
        "model": model_fingerprint(run, card),
        "data": {"root": str(Path(ds.root).resolve()), "fingerprint": data_fp},
    }
    write_json(run / CALIBRATION_FILE, cal)
    return cal, False


def describe(cal: dict[str, Any] | None) -> str:
    """One line for people: the threshold and what it gives on validation data."""
    if cal is None:
        return "no confidence threshold calibrated (run `h2f index RUN` or `h2f calibrate RUN`)"
    n, domain = cal.get("n", 0), cal.get("validation", {}).get("domain", "field")
    if cal.get("threshold") is None:
        if not n:
            return "no validation photos to calibrate a confidence threshold on"
        return (
            f"no threshold reaches {cal['target_precision']:.0%} precision on {n} validation {domain} images "
            f"(best {cal['precision']:.0%}); every answer is marked uncertain"
        )
    return (
        f"threshold {cal['threshold']:.3f}: {cal['precision']:.0%} precision at rank 1, "
        f"{cal['coverage']:.0%} coverage on {n} validation {domain} images"
    )
