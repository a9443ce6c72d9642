"""From scores to confidences, and several photos of one plant to one answer.

Confidence: the probability the model outputs. A network's scores are logits (ArcFace: ``s·cos θ`` with
s = the head's scale, 15 by default; softmax head: the linear layer's output) and the confidence is their
softmax, with no extra temperature. A classic run's classifier already outputs probabilities
(``predict_proba``; species it never saw get 0). The "no confident match" threshold is then chosen on
validation photos for exactly this quantity (see ``identify.calibrate``).

Several photos of one plant (as Pl@ntNet allows: a leaf, a flower, the habit) are combined in one of
two ways, both from the per-photo log-probabilities:

- ``probabilities`` (default): the arithmetic mean of the per-photo probabilities. An off-target or
  blurry photo gives a flat distribution that dilutes the others but cannot veto a species.
- ``geometric``: the normalised geometric mean of the probabilities (a product of experts), i.e. the
  softmax of the mean logits. For an ArcFace head this ranks species exactly as scoring the mean of the
  photos' L2-normalised embeddings does (the logits are linear in the normalised embedding; the two
  differ only by a temperature), so it is the "average the embeddings" option. Every photo must
  agree: one photo that rules a species out removes it.

``compare_combinations`` measures both on same-species groups of validation photos; ``h2f calibrate``
stores the comparison in the run's ``calibration.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

COMBINE_METHODS = ("probabilities", "geometric")
SCORE_KINDS = ("logits", "probabilities")


def softmax(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def log_probabilities(scores: np.ndarray, kind: str = "logits") -> np.ndarray:
    """Per-photo log-probabilities ``[P, C]`` (float64; ``-inf`` for impossible species)."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if kind == "logits":
        s = s - s.max(axis=1, keepdims=True)
        return s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    if kind == "probabilities":
        p = np.clip(np.nan_to_num(s, nan=0.0, neginf=0.0, posinf=1.0), 0.0, None)
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        with np.errstate(divide="ignore"):
            return np.log(p)
    raise ValueError(f"unknown score kind {kind!r}; use one of {', '.join(SCORE_KINDS)}")


def probabilities(scores: np.ndarray, kind: str = "logits") -> np.ndarray:
    """Per-photo probabilities ``[P, C]`` from a model's scores."""
    return np.exp(log_probabilities(scores, kind)).astype(np.float32)


def combine(log_probs: np.ndarray, method: str = "probabilities") -> np.ndarray:
    """One probability vector ``[C]`` from the log-probabilities ``[P, C]`` of P photos of one plant."""
    lp = np.atleast_2d(log_probs)
    if method == "probabilities":
        return np.exp(lp).mean(axis=0).astype(np.float32)
    if method == "geometric":
        return softmax(lp.mean(axis=0))
    raise ValueError(f"unknown combination {method!r}; use one of {', '.join(COMBINE_METHODS)}")


def combine_embeddings(emb: np.ndarray) -> np.ndarray:
    """The mean of L2-normalised embeddings, renormalised: one query vector for several photos."""
    m = np.atleast_2d(emb).mean(axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)


def same_species_groups(
    labels: np.ndarray, size: int, *, per_class: int = 20, seed: int = 0
) -> list[np.ndarray]:
    """Random groups of ``size`` distinct photos of the same species (at most ``per_class`` per species)."""
    rng = np.random.default_rng(seed)
    groups: list[np.ndarray] = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        if len(idx) < size:
            continue
        seen: set[tuple[int, ...]] = set()
        for _ in range(per_class * 4):
            g = tuple(sorted(rng.choice(idx, size, replace=False).tolist()))
            if g not in seen:
                seen.add(g)
                groups.append(np.asarray(g))
            if len(seen) >= per_class:
                break
    return groups


def compare_combinations(
    log_probs: np.ndarray,
    labels: np.ndarray,
    *,
    sizes: tuple[int, ...] = (2, 3),
    per_class: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Top-1 accuracy of single photos and of each combination on random same-species groups of photos.

    Validation sets rarely say which photos show the same individual, so groups of photos of one
    *species* stand in for several photos of one *plant*: harder than the real use, where the photos
    share the individual, the place and the light.
    """
    labels = np.asarray(labels)
    known = labels >= 0
    out: dict[str, Any] = {
        "single": {
            "photos": int(known.sum()),
            "top1": _acc(np.argmax(log_probs[known], axis=1), labels[known]),
        }
    }
    for size in sizes:
        groups = same_species_groups(labels, size, per_class=per_class, seed=seed)
        if not groups:
            continue
        row: dict[str, Any] = {"groups": len(groups)}
        truth = np.array([labels[g[0]] for g in groups])
        for method in COMBINE_METHODS:
            preds = np.array([int(np.argmax(combine(log_probs[g], method))) for g in groups])
            row[method] = _acc(preds, truth)
        out[f"groups_of_{size}"] = row
    return out


def _acc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    return float(np.mean(pred == labels)) if len(labels) else None
