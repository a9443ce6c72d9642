"""Restrict the candidates to a checklist: the species known from a region or a project, as Pl@ntNet's
regional floras do. Probabilities are renormalised over the checklist, and the "no confident match"
threshold is chosen again on the run's validation photos of checklist species (scored over the checklist
only), since renormalised confidences are higher than the ones the run's own threshold was chosen for.

A checklist file has one species per line: a class id, a scientific name ("Euphorbia hirta L.", or just the
binomial "Euphorbia hirta"), or a genus followed by " sp." for all its species; blank lines and ``#``
comments are ignored. Each line must match something the model knows, or the error names the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from herbarium2field.errors import H2FError
from herbarium2field.run.artefacts import ValidationSet
from herbarium2field.run.card import ModelCard
from herbarium2field.scoring.combine import log_probabilities
from herbarium2field.scoring.taxonomy import genus_of
from herbarium2field.scoring.threshold import choose_threshold


@dataclass
class Checklist:
    """The species a question is restricted to (a mask over the card's classes) and its own threshold."""

    mask: np.ndarray  # [C] bool
    source: str
    threshold: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return int(self.mask.sum())

    def restrict(self, log_probs: np.ndarray) -> np.ndarray:
        """Per-photo log-probabilities renormalised over the checklist (others: -inf)."""
        lp = np.where(self.mask, np.atleast_2d(log_probs), -np.inf)
        top = lp.max(axis=1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        return lp - top - np.log(np.exp(lp - top).sum(axis=1, keepdims=True))

    def describe(self) -> dict[str, Any]:
        return {"species": self.size, "source": self.source}


def match_entries(entries: Sequence[tuple[str, str, int | None]], card: ModelCard) -> np.ndarray:
    """A class mask from ``(text, source, line)`` entries; H2FError naming every entry nothing matches."""
    by_id = {c: i for i, c in enumerate(card.class_ids)}
    by_name: dict[str, list[int]] = {}
    for i, name in enumerate(card.species):
        full = " ".join(name.split()).lower()
        binomial = " ".join(name.split()[:2]).lower()
        for key in {full, binomial}:
            by_name.setdefault(key, []).append(i)
    by_genus: dict[str, list[int]] = {}
    for i, name in enumerate(card.species):
        by_genus.setdefault(genus_of(name).lower(), []).append(i)
    mask = np.zeros(card.num_classes, dtype=bool)
    bad = []
    for text, source, line in entries:
        key = " ".join(text.split())
        low = key.lower()
        if key in by_id:
            mask[by_id[key]] = True
        elif low in by_name:
            mask[by_name[low]] = True
        elif low.endswith(" sp.") and low[:-4] in by_genus:
            mask[by_genus[low[:-4]]] = True
        else:
            bad.append(f"{source}:{line}: {text!r}" if line else f"{source}: {text!r}")
    if bad:
        raise H2FError(f"{len(bad)} checklist entr{'y' if len(bad) == 1 else 'ies'} match no species of this model:\n  "
                       + "\n  ".join(bad[:20]), hint="use class ids, scientific names, or 'Genus sp.'")
    if not mask.any():
        raise H2FError("the checklist is empty", path=entries[0][1] if entries else None)
    return mask


def read_checklist(path: str | Path, card: ModelCard) -> np.ndarray:
    """The class mask of a checklist file (see the module doc)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise H2FError(f"cannot read the checklist ({exc})", path=path) from None
    entries = [(raw.strip(), str(path), n) for n, raw in enumerate(lines, 1)
               if raw.strip() and not raw.strip().startswith("#")]
    if not entries:
        raise H2FError("the checklist is empty", path=path)
    return match_entries(entries, card)


def make_checklist(mask: np.ndarray, source: str, run: Path, card: ModelCard, scorer_kind: str,
                   scorer: Any, *, target: float) -> Checklist:
    """A checklist with its threshold chosen on the validation photos of its species (scored over it)."""
    val = ValidationSet.load(run, card)
    keep = (val.labels >= 0) & (val.domains == 1) & ~np.isnan(val.embeddings).any(axis=1)
    keep &= mask[np.clip(val.labels, 0, None)]
    checklist = Checklist(mask, source)
    if keep.any():
        rows = val.subset(keep)
        lp = checklist.restrict(log_probabilities(scorer(rows.embeddings, rows.logits), scorer_kind))
        checklist.threshold = choose_threshold(np.exp(lp.max(axis=1)), lp.argmax(axis=1) == rows.labels,
                                               target=target)
    else:
        checklist.threshold = choose_threshold(np.zeros(0), np.zeros(0, bool), target=target)
    return checklist
