"""The "no confident match" threshold: the lowest confidence at which a model's top answers on validation
photos are right at least ``target`` of the time (default 90 %).

Rule: among thresholds ``t`` on the top-1 confidence, take the *lowest* one at which the answers kept
(confidence >= t) are right at least ``target_precision`` of the time, with at least :data:`MIN_ACCEPTED`
photos kept so that one lucky photo cannot set it. The lowest such ``t`` keeps the most answers (maximal
coverage at the target precision). If no threshold reaches the target, nothing is called confident
(``threshold = null``, ``reached = false``): a model that is never 90 % right should say so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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


def describe_threshold(cal: dict[str, Any] | None) -> str:
    """One line for people: the threshold and what it gives on validation data."""
    if cal is None:
        return "no confidence threshold calibrated (run `h2f calibrate RUN`)"
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
