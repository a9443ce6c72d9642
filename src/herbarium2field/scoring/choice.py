"""A ranking choice that cannot hurt: at the end of training a run with ``inference.mode: auto`` picks how it
ranks species by leave-species-out on its own validation photos, and keeps its classifier unless evidence
says otherwise.

Each paired species with validation photos is made herbarium-only in turn (its training photos leave the
class means, and the herbarium→field offset is measured without it); its validation photos then play a
herbarium-only species, and the other species' validation photos play the species with photos. Candidates:
the classifier, and prototypes (``both``, ``weighted`` and ``shifted`` over a grid of field weight and shift
strength).

The classifier cannot be put in that role honestly: it was trained on the held-out species' photos, so its
held-out score is an upper bound. A prototype ranking replaces it only if its herbarium-only top-1 beats even
that bound by more than the noise (the lower end of a paired-bootstrap 95 % interval above zero) *and* its
top-1 on the species with photos is not lower. So the choice can keep a weaker ranking, never pick one the
validation photos say is worse; with a few validation photos it keeps the classifier.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from herbarium2field.scoring.metrics import paired_diff, ranks
from herbarium2field.scoring.prototypes import (
    CALIBRATION_GRID,
    ClassMeans,
    mean_offset,
    prototype_scores,
    prototypes,
)

#: Prototype candidates besides ``shifted`` (which spans CALIBRATION_GRID).
PLAIN = (("both", 0.5, 0.0), ("weighted", 0.25, 0.0), ("weighted", 0.5, 0.0), ("weighted", 0.75, 0.0))


def _candidates() -> list[tuple[str, float, float]]:
    return [*PLAIN, *(("shifted", fw, a) for fw, a in CALIBRATION_GRID if a > 0)]


def choose_ranking(means: ClassMeans, emb: np.ndarray, labels: np.ndarray, classifier_scores: np.ndarray, *,
                   n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The choice and its evidence. ``emb``/``labels``/``classifier_scores``: the validation field photos."""
    paired = (means.n_herbarium > 0) & (means.n_field > 0)
    known = (labels >= 0) & ~np.isnan(emb).any(axis=1) & ~np.isnan(classifier_scores).any(axis=1)
    emb, labels, clf = emb[known], labels[known], classifier_scores[known]
    held = [int(c) for c in np.flatnonzero(paired) if np.any(labels == c)]
    keep = {"mode": "classifier", "prototype_source": "both", "field_weight": 0.5, "shift": 0.0}
    evidence: dict[str, Any] = {"held_out_species": len(held), "validation_photos": int(len(labels)),
                                "rule": "keep the classifier unless a prototype ranking's herbarium-only top-1 beats "
                                        "the classifier's (an upper bound) beyond the paired 95 % interval and its "
                                        "top-1 on species with photos is not lower"}
    if len(held) < 2:
        evidence["note"] = "fewer than two species with validation photos: nothing to hold out, classifier kept"
        return {**keep, "evidence": evidence}
    on_held = np.isin(labels, held)
    clf_hit = ranks(clf, labels) <= 1
    rows = []
    for source, fw, shift in _candidates():
        held_hit = np.zeros(len(labels), dtype=bool)
        for c in held:
            m = means.without_field([c])
            offset = mean_offset(m)
            p = prototypes(m, source, field_weight=fw, shift=shift, offset=offset)  # type: ignore[arg-type]
            own = labels == c
            held_hit[own] = ranks(prototype_scores(emb[own], p), labels[own]) <= 1
        full = prototypes(means, source, field_weight=fw, shift=shift)  # type: ignore[arg-type]
        pair_hit = ranks(prototype_scores(emb, full), labels) <= 1
        gain = paired_diff(clf_hit[on_held].astype(float), held_hit[on_held].astype(float), n_boot, seed)
        rows.append({"prototype_source": source, "field_weight": fw, "shift": shift,
                     "held_out_top1": round(float(held_hit[on_held].mean()), 4),
                     "paired_top1": round(float(pair_hit.mean()), 4), "gain_held_out": gain})
    evidence.update({"classifier_held_out_top1_upper_bound": round(float(clf_hit[on_held].mean()), 4),
                     "classifier_paired_top1": round(float(clf_hit.mean()), 4), "candidates": rows})
    winners = [r for r in rows if r["gain_held_out"]["ci"] and r["gain_held_out"]["ci"][0] > 0
               and r["paired_top1"] >= evidence["classifier_paired_top1"]]
    if not winners:
        return {**keep, "evidence": evidence}
    best = max(winners, key=lambda r: (r["held_out_top1"], r["paired_top1"]))
    return {"mode": "prototype", "prototype_source": best["prototype_source"], "field_weight": best["field_weight"],
            "shift": best["shift"], "evidence": evidence}
