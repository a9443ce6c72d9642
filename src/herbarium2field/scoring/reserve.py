"""Reserved places for herbarium-only species: the classifier keeps the top of the list, and ``k`` of the
first five places go to the species without field training photos whose sheets look most like the photo.

Why: on real photos (leave-species-out on the shared sample) no classifier or prototype ranks a herbarium-only
species first, and score fusion trades the two groups against each other badly; reserving places never
changes the top-1 answer and costs the species with photos only the hits that sat at ranks ``6-k`` to 5.

The sheet match (the *branch*) is the best cosine between the photo (greyscale, as the sheets) and any view of
a species' sheets (:mod:`herbarium2field.data.sheet_views`).
"""

from __future__ import annotations

import numpy as np

#: The list the reserved places are counted in (top-5, the benchmark's second number).
WITHIN = 5


def view_scores(query: np.ndarray, views: np.ndarray, view_class: np.ndarray, num_classes: int) -> np.ndarray:
    """``[N, C]``: each class's best cosine over its sheet views (``-inf`` for a class without views)."""
    q = np.atleast_2d(np.asarray(query, dtype=np.float32))
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    sims = np.nan_to_num(q) @ np.asarray(views, dtype=np.float32).T  # [N, V]
    out = np.full((len(q), num_classes), -np.inf, dtype=np.float32)
    for c in np.unique(view_class):
        out[:, c] = sims[:, view_class == c].max(axis=1)
    out[np.isnan(q).any(axis=1)] = np.nan
    return out


def reserved_keys(scores: np.ndarray, branch: np.ndarray, herbarium_only: np.ndarray, k: int,
                  within: int = WITHIN) -> np.ndarray:
    """Ranking keys ``[N, C]``: the classifier's first ``within - k`` species, then the ``k`` herbarium-only
    species (not already listed) with the best sheet match, then every other species in the classifier's
    order. ``scores``: the classifier's (higher = better); ``herbarium_only``: bool ``[C]``."""
    s = np.asarray(scores, dtype=np.float64)
    n, c = s.shape
    order = np.argsort(-s, axis=1, kind="stable")
    keys = np.empty((n, c))
    keys[np.arange(n)[:, None], order] = -np.arange(c, dtype=np.float64)[None, :]  # the classifier's ranking
    if k <= 0:
        return keys
    head = max(within - k, 0)
    b = np.where(herbarium_only[None, :], np.nan_to_num(np.asarray(branch, dtype=np.float64), nan=-np.inf), -np.inf)
    for i in range(n):
        top = order[i, :head]
        keys[i, top] = 3 * c - np.arange(head)
        pool = b[i].copy()
        pool[top] = -np.inf
        picks = [j for j in np.argsort(-pool, kind="stable")[:k] if np.isfinite(pool[j])]
        keys[i, picks] = 2 * c - np.arange(len(picks))
    return keys


def reserved_of(keys: np.ndarray, scores: np.ndarray, within: int = WITHIN) -> np.ndarray:
    """Bool ``[N, C]``: the species that reached the first ``within`` places through a reserved place."""
    s = np.asarray(scores, dtype=np.float64)
    n, c = s.shape
    by_key = np.argsort(-keys, axis=1, kind="stable")[:, :within]
    by_score = np.argsort(-s, axis=1, kind="stable")[:, :within]
    out = np.zeros((n, c), dtype=bool)
    for i in range(n):
        out[i, np.setdiff1d(by_key[i], by_score[i])] = True
    return out
