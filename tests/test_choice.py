"""The ranking choice that cannot hurt (``inference.mode: auto``): a prototype ranking replaces the classifier
only when the validation photos show it finds held-out species beyond noise without costing the others."""

from __future__ import annotations

import numpy as np

from herbarium2field.scoring.choice import choose_ranking
from herbarium2field.scoring.prototypes import ClassMeans


def world(n_classes: int = 12, paired: int = 10, photos: int = 6, offset: float = 2.0, seed: int = 0,
          shared: bool = True):
    """Species on their own axes; field photos are the sheets moved along one shared axis (a domain gap that a
    shift can undo) or, with ``shared=False``, each species along its own random direction (a gap no offset
    measured on other species undoes). Returns class means and validation photos of the paired species."""
    rng = np.random.default_rng(seed)
    dim = 2 * n_classes + 1
    axes = np.eye(dim)[:n_classes]
    moves = np.tile(offset * np.eye(dim)[n_classes], (n_classes, 1))
    if not shared:
        moves = offset * rng.standard_normal((n_classes, dim)) / np.sqrt(dim) * 3
    rows = [(axes[c], c, 0) for c in range(n_classes) for _ in range(3)]
    rows += [(axes[c] + moves[c], c, 1) for c in range(paired) for _ in range(3)]
    emb = np.array([r[0] for r in rows]) + 0.05 * rng.standard_normal((len(rows), dim))
    means = ClassMeans.from_embeddings(emb, np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), n_classes)
    labels = np.repeat(np.arange(paired), photos)
    val = axes[labels] + moves[labels] + 0.05 * rng.standard_normal((len(labels), dim))
    return means, val, labels


def test_a_prototype_ranking_that_finds_held_out_species_replaces_a_weak_classifier():
    means, val, labels = world()
    weak = np.random.default_rng(1).standard_normal((len(labels), 12))  # a classifier that knows nothing
    pick = choose_ranking(means, val, labels, weak)
    assert pick["mode"] == "prototype"
    ev = pick["evidence"]
    best = next(r for r in ev["candidates"] if (r["prototype_source"], r["field_weight"], r["shift"])
                == (pick["prototype_source"], pick["field_weight"], pick["shift"]))
    assert best["gain_held_out"]["ci"][0] > 0 and best["paired_top1"] >= ev["classifier_paired_top1"]


def test_the_classifier_is_kept_when_it_is_as_good_or_the_evidence_is_thin():
    means, val, labels = world()
    perfect = np.eye(12)[labels] * 10.0  # right on every photo: nothing can beat its (optimistic) bound
    assert choose_ranking(means, val, labels, perfect)["mode"] == "classifier"
    weak = np.random.default_rng(1).standard_normal((len(labels), 12))
    few = np.isin(labels, [0])  # one species with validation photos: nothing to hold out
    pick = choose_ranking(means, val[few], labels[few], weak[few])
    assert pick["mode"] == "classifier" and "fewer than two" in pick["evidence"]["note"]
    # a gap of each species' own: held-out species are not found by any prototype, so a decent classifier stays
    means1, val1, labels1 = world(offset=2.0, shared=False)
    decent = np.eye(12)[labels1] * 3.0 + np.random.default_rng(2).standard_normal((len(labels1), 12))
    pick = choose_ranking(means1, val1, labels1, decent)
    assert pick["mode"] == "classifier"
    assert max(r["held_out_top1"] for r in pick["evidence"]["candidates"]) < 0.5
