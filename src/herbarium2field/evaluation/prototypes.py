"""Prototype classification: rank species by cosine similarity to class prototypes built from training
embeddings. The original project's best mode; here also the home of domain-aligned prototypes.

Prototype sources (``source``):

- ``herbarium`` / ``field`` / ``both``: mean L2-normalised embedding of that domain's training images
  (``field`` falls back to herbarium for species without photos).
- ``weighted``: ``(1 - w)·herbarium mean + w·field mean`` where a species has photos, herbarium mean otherwise.
- ``shifted``: species without field photos get their herbarium mean moved by the average herbarium→field
  offset measured on the species that have both (``field mean − herbarium mean``), so their prototype
  lands where their photos are expected to be; species with photos use the ``weighted`` prototype.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Source = Literal["herbarium", "field", "both", "weighted", "shifted"]
SOURCES: tuple[str, ...] = ("herbarium", "field", "both", "weighted", "shifted")


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
                     source: Source = "both", field_weight: float = 0.5) -> np.ndarray:
    """Prototypes ``[C, D]`` (L2-normalised; a class without any training image gets a zero row).

    ``domains`` uses 0 = herbarium, 1 = field.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown prototype source {source!r}; choose from {', '.join(SOURCES)}")
    herb, n_herb = class_means(emb[domains == 0], labels[domains == 0], num_classes)
    field, n_field = class_means(emb[domains == 1], labels[domains == 1], num_classes)
    has_field, has_herb = n_field > 0, n_herb > 0
    if source == "both":
        both, _ = class_means(emb, labels, num_classes)
        return _normalise(both)
    if source == "herbarium":
        return _normalise(np.where(has_herb[:, None], herb, field))
    if source == "field":
        return _normalise(np.where(has_field[:, None], field, herb))
    mixed = np.where((has_field & has_herb)[:, None], (1 - field_weight) * _normalise(herb)
                     + field_weight * _normalise(field), np.where(has_field[:, None], field, herb))
    if source == "weighted":
        return _normalise(mixed)
    paired = has_field & has_herb
    if not paired.any():
        return _normalise(mixed)
    offset = (_normalise(field[paired]) - _normalise(herb[paired])).mean(axis=0)
    shifted = np.where((has_herb & ~has_field)[:, None], _normalise(herb) + offset, mixed)
    return _normalise(shifted)


def prototype_scores(query: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[N, C]``; classes without a prototype get -inf (never ranked above a real one)."""
    sims = _normalise(query.astype(np.float64)) @ prototypes.T
    empty = ~np.any(prototypes != 0, axis=1)
    sims[:, empty] = -np.inf
    return sims.astype(np.float32)


def run_prototypes(run, *, source: str = "shifted", field_weight: float = 0.5, data=None,  # type: ignore[no-untyped-def]
                   progress: bool = False) -> np.ndarray:
    """Prototypes of a run from its own training split (embeddings cached in the run directory)."""
    from herbarium2field.evaluation.outputs import split_outputs

    train = split_outputs(run, "train", data=data, progress=progress)
    return build_prototypes(train.embeddings, train.labels, train.domains, len(train.card.class_ids),
                            source=source, field_weight=field_weight)  # type: ignore[arg-type]
