"""Answers above the species: the genus (from the species name) and, where a taxonomy says, the family.

A genus's probability is the sum of its species' probabilities, so "Euphorbia sp. at 90 %" can be confident
when no single Euphorbia is. Scientific names start with the genus ("Euphorbia hirta L."); a name that is a
bare class id (no space) is its own genus, so a species without a name never shares a genus by accident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def genus_of(name: str) -> str:
    """The genus of a scientific name: its first word ("× Cupressocyparis leylandii" -> "× Cupressocyparis")."""
    parts = str(name).split()
    if not parts:
        return ""
    if parts[0] in ("×", "x") and len(parts) > 1:  # a hybrid genus
        return f"× {parts[1]}"
    return parts[0]


@dataclass(frozen=True)
class Taxonomy:
    """Genus (and family) of each class, as indices into ``genera`` (``families``)."""

    genera: tuple[str, ...]
    genus_of_class: np.ndarray  # [C] int
    families: tuple[str, ...] = ()
    family_of_genus: np.ndarray | None = None  # [G] int (-1: unknown)

    @classmethod
    def from_species(cls, species: Sequence[str], families: Mapping[str, str] | None = None) -> Taxonomy:
        """From the species names in class order; ``families`` maps a genus to its family (optional)."""
        names = [genus_of(s) for s in species]
        genera = tuple(dict.fromkeys(names))
        index = {g: i for i, g in enumerate(genera)}
        fams: tuple[str, ...] = ()
        fam_of = None
        if families:
            fams = tuple(dict.fromkeys(f for g in genera if (f := families.get(g))))
            fidx = {f: i for i, f in enumerate(fams)}
            fam_of = np.array([fidx.get(families.get(g, ""), -1) for g in genera], dtype=np.int64)
        return cls(genera, np.array([index[g] for g in names], dtype=np.int64), fams, fam_of)

    @property
    def num_genera(self) -> int:
        return len(self.genera)

    def genus_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """``[N, G]``: each genus's share of the probability (the sum over its species)."""
        p = np.atleast_2d(np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.0))
        out = np.zeros((len(p), self.num_genera))
        np.add.at(out.T, self.genus_of_class, p.T)
        return out

    def genus_labels(self, labels: np.ndarray) -> np.ndarray:
        """Genus index of each class label (-1 stays -1)."""
        y = np.asarray(labels, dtype=np.int64)
        return np.where(y >= 0, self.genus_of_class[np.clip(y, 0, None)], -1)

    def species_in(self, genus: int) -> np.ndarray:
        return np.flatnonzero(self.genus_of_class == genus)

    def family(self, genus: int) -> str | None:
        if self.family_of_genus is None or self.family_of_genus[genus] < 0:
            return None
        return self.families[int(self.family_of_genus[genus])]


def lift_congeners(log_probs: np.ndarray, taxonomy: Taxonomy, herbarium_only: np.ndarray, margin: float
                   ) -> np.ndarray:
    """Genus sharing at inference: a herbarium-only species gets at least its best congener-with-photos'
    log-probability minus ``margin`` (renormalised). A photo the classifier gives to *Euphorbia hirta* then
    also brings up the *Euphorbia* it never saw in the field; species outside such genera are unchanged."""
    lp = np.atleast_2d(np.asarray(log_probs, dtype=np.float64))
    out = lp.copy()
    has_photos = ~np.asarray(herbarium_only, dtype=bool)
    for g in range(taxonomy.num_genera):
        members = taxonomy.species_in(g)
        donors, takers = members[has_photos[members]], members[~has_photos[members]]
        if len(donors) and len(takers):
            best = lp[:, donors].max(axis=1, keepdims=True) - margin
            out[:, takers] = np.maximum(lp[:, takers], best)
    top = out.max(axis=1, keepdims=True)
    return out - top - np.log(np.exp(out - top).sum(axis=1, keepdims=True))
