"""Identification as a service: photos of one plant in; ranked species with the herbarium sheets that back
each answer out, and the genus when the species is uncertain. Used by ``h2f identify``, ``h2f serve`` and
``h2f predict`` alike, so all give the same answer.

JSON answer (``Identifier.identify``)::

    {
      "model":      {"run", "kind", "backend", "species"},
      "photos":     [{"name"}],                       # in the order given
      "combine":    "probabilities" | "geometric",    # how several photos became one answer
      "confidence": "softmax of the network's logits ..." | "the classifier's probability ...",
      "ranking":    "ranked by the classifier" | "ranked by shifted prototypes (...)",
      "checklist":  {"species", "source"} | null,     # candidates restricted to a checklist
      "threshold":  {"value", "reached", "precision", "coverage", "target_precision", "validation_images", "text"} | null,
      "confident":  true | false | null,              # species level; null: no calibration available
      "genus":      {"name", "score", "family", "species", "confident", "threshold": {...} | null},
      "answer":     {"level": "species" | "genus" | "none", "name", "score"},
      "message":    "one sentence for people",
      "results": [                                    # top-k species, best first
        {"rank", "class_id", "species", "genus", "score",  # score = combined confidence in [0, 1]
         "with_pairs",                                # species had field photos in training
         "reserved", "sheet_match",                   # placed in the top 5 by its sheets (inference.reserve)
         "herbarium": [{"id", "image_id", "class_id", "species", "path", "similarity", "photo"}]}
      ],
      "nearest_sheets": [ ...same sheet objects, any species... ],
      "seconds": float
    }

A genus's score is the sum of its species' probabilities. When no species reaches the confidence threshold
but the top genus reaches the genus threshold (chosen on the same validation photos by the same rule), the
answer is given at genus level ("Euphorbia sp."). Sheets per species are the species' own sheets ranked by
cosine similarity to the photos (exact scan of that species' slice of the gallery); ``nearest_sheets`` are
the globally nearest sheets (faiss), which show look-alikes of other species.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from herbarium2field.data.cache import DEFAULT_SIZE
from herbarium2field.identify.checklist import Checklist, make_checklist, match_entries, read_checklist
from herbarium2field.retrieval.gallery import Gallery
from herbarium2field.run.artefacts import load_calibration
from herbarium2field.run.card import ModelCard
from herbarium2field.run.load import RunModel, herbarium_only, load_model
from herbarium2field.scoring.combine import COMBINE_METHODS, combine, combine_embeddings, log_probabilities
from herbarium2field.scoring.reserve import WITHIN, reserved_keys
from herbarium2field.scoring.threshold import DEFAULT_TARGET, describe_threshold


def photo_min_side(input_size: int) -> int:
    """Short side photos are decoded to: the same as the training image cache, so a photo goes through
    exactly the resize the validation and gallery images went through."""
    return max(DEFAULT_SIZE, int(input_size))


def _threshold_view(c: dict[str, Any] | None, n_key: str = "n") -> dict[str, Any] | None:
    """The parts of a calibration people and clients need; ``None`` when nothing was calibrated."""
    if c is None or not c.get(n_key):
        return None
    return {"value": c.get("threshold"), "reached": bool(c.get("reached")), "precision": c.get("precision"),
            "coverage": c.get("coverage"), "target_precision": c.get("target_precision"),
            "validation_images": c.get(n_key), "text": describe_threshold(c)}


class Identifier:
    """A run's model + herbarium gallery + calibration, loaded once and shared by all requests.

    Needs the run directory (or a bundle) only, never the training data. ``gallery=False`` answers without
    herbarium sheets (``h2f predict`` on a run that was never indexed).
    """

    def __init__(self, run: str | Path, *, backend: str = "auto", threads: int | None = None,
                 model: RunModel | None = None, card: ModelCard | None = None, gallery: bool = True,
                 checklist: str | Path | None = None) -> None:
        self.model = model or load_model(run, backend, threads=threads, card=card)
        self.run, self.card = self.model.run, self.model.card
        self.gallery: Gallery | None = Gallery.load(self.run) if gallery else None
        if self.gallery is not None:
            self.gallery.check_model(self.run, self.card)
        self.calibration = load_calibration(self.run, self.card)
        self.taxonomy = self.card.taxonomy()
        self.with_pairs = set(self.card.with_pairs)
        self.min_side = photo_min_side(self.model.pre.input_size)
        self.checklist = self.load_checklist(checklist) if checklist is not None else None

    @property
    def backend(self) -> str:
        return self.model.backend

    def threshold(self) -> dict[str, Any] | None:
        """The calibrated species rule, or ``None`` when there is none (not calibrated, or no validation photos)."""
        return _threshold_view(self.calibration)

    def genus_threshold(self) -> dict[str, Any] | None:
        return _threshold_view((self.calibration or {}).get("genus"))

    def _target(self) -> float:
        return float((self.calibration or {}).get("target_precision") or DEFAULT_TARGET)

    def load_checklist(self, path: str | Path) -> Checklist:
        """A checklist file (see :mod:`.checklist`), with its own threshold on the run's validation photos."""
        return make_checklist(read_checklist(path, self.card), str(path), self.run, self.card,
                              self.model.score_kind, self.model.scorer, target=self._target())

    def checklist_of(self, species: Sequence[str], source: str = "request") -> Checklist:
        """A checklist from class ids or names sent with a request."""
        mask = match_entries([(s, source, None) for s in species if s.strip()], self.card)
        return make_checklist(mask, source, self.run, self.card, self.model.score_kind, self.model.scorer,
                              target=self._target())

    def identify(self, images: Sequence[Image.Image], names: Sequence[str] | None = None, *, top_k: int = 5,
                 sheets: int = 3, nearest: int = 6, method: str = "probabilities",
                 checklist: Checklist | None = None) -> dict[str, Any]:
        """Identify one plant from one or more photos (see the module doc for the answer's layout)."""
        start = time.perf_counter()
        emb, scores, branch = self.model.predict_with_branch(list(images))
        names = list(names) if names is not None else [f"photo {i + 1}" for i in range(len(images))]
        answer = self.answer(emb, scores, top_k=top_k, sheets=sheets, nearest=nearest, method=method,
                             checklist=checklist, branch=branch)
        answer["photos"] = [{"name": n} for n in names]
        answer["seconds"] = round(time.perf_counter() - start, 4)
        return answer

    def answer(self, emb: np.ndarray, scores: np.ndarray, *, top_k: int = 5, sheets: int = 3, nearest: int = 6,
               method: str = "probabilities", checklist: Checklist | None = None,
               branch: np.ndarray | None = None) -> dict[str, Any]:
        """The answer for the outputs of one plant's photos (``emb [P, D]``, ``scores [P, C]``; ``branch``: the
        photos as the sheet branch sees them, when the run reserves places for herbarium-only species)."""
        if method not in COMBINE_METHODS:
            raise ValueError(f"unknown combination {method!r}")
        checklist = checklist or self.checklist
        lp = log_probabilities(scores, self.model.score_kind)
        if checklist is not None:
            lp = checklist.restrict(lp)
        probs = combine(lp, method)
        top_k = max(1, min(top_k, int((probs > 0).sum())))  # impossible species (outside a checklist) are not listed
        reserved: set[int] = set()
        sims = None
        if self.model.reserve and branch is not None:
            sims = self.model.branch_sims(branch).max(axis=0)  # the best photo for each species' sheets
            if checklist is not None:
                sims = np.where(checklist.mask, sims, -np.inf)
            with np.errstate(divide="ignore"):
                base = np.log(probs)[None]
            keys = reserved_keys(base, sims[None], herbarium_only(self.card), self.model.reserve)[0]
            order = np.argsort(-keys, kind="stable")[:top_k]
            reserved = {int(i) for i in order[:WITHIN]} - {int(i) for i in np.argsort(-probs, kind="stable")[:WITHIN]}
        else:
            order = np.argsort(-probs, kind="stable")[:top_k]
        queries = emb if method == "probabilities" else combine_embeddings(emb)[None]
        tax = self.taxonomy
        results = []
        for rank, ci in enumerate(order, 1):
            cid = self.card.class_ids[int(ci)]
            results.append({
                "rank": rank,
                "class_id": cid,
                "species": self.card.species[int(ci)],
                "genus": tax.genera[tax.genus_of_class[int(ci)]],
                "score": round(float(probs[ci]), 4),
                "with_pairs": cid in self.with_pairs,
                "reserved": int(ci) in reserved,  # placed by its sheets' likeness (a herbarium-only candidate)
                "sheet_match": round(float(sims[ci]), 4) if sims is not None and np.isfinite(sims[ci]) else None,
                "herbarium": [m.to_dict() for m in self.gallery.best_in_class(queries, cid, sheets)]
                if self.gallery is not None and sheets else [],
            })
        threshold = (_threshold_view(checklist.threshold) if checklist is not None and checklist.threshold
                     else self.threshold())
        genus = self._genus(probs, checklist)
        confident, answer, message = self._verdict(float(probs[order[0]]), results[0]["species"], threshold,
                                                   genus, len(emb))
        return {
            "model": {"run": self.card.name, "kind": self.card.kind, "backend": self.backend,
                      "species": self.card.num_classes},
            "combine": method,
            "confidence": self.model.confidence,
            "ranking": self.model.choice.describe() if self.model.choice else "ranked by the classifier",
            "checklist": checklist.describe() if checklist is not None else None,
            "threshold": threshold,
            "confident": confident,
            "genus": genus,
            "answer": answer,
            "message": message,
            "results": results,
            "nearest_sheets": [m.to_dict() for m in self.gallery.nearest(queries, nearest)]
            if self.gallery is not None and nearest else [],
        }

    def _genus(self, probs: np.ndarray, checklist: Checklist | None) -> dict[str, Any]:
        tax = self.taxonomy
        gp = tax.genus_probabilities(probs)[0]
        g = int(np.argmax(gp))
        threshold = None if checklist is not None else self.genus_threshold()  # not re-chosen per checklist
        value = threshold.get("value") if threshold else None
        members = [self.card.class_ids[i] for i in tax.species_in(g)]
        return {"name": tax.genera[g], "score": round(float(gp[g]), 4), "family": tax.family(g),
                "species": members, "threshold": threshold,
                "confident": None if threshold is None else bool(value is not None and gp[g] >= value)}

    @staticmethod
    def _verdict(best: float, species: str, threshold: dict[str, Any] | None, genus: dict[str, Any],
                 photos: int) -> tuple[bool | None, dict[str, Any], str]:
        of = f" from {photos} photos" if photos > 1 else ""
        species_answer = {"level": "species", "name": species, "score": round(best, 4)}
        if threshold is None:
            return None, species_answer, (
                f"Most likely {species} ({best:.0%}){of}; no confidence threshold is calibrated for this model.")
        value = threshold.get("value")
        if value is not None and best >= value:
            return True, species_answer, f"{species} ({best:.0%}){of}."
        if genus["confident"] and len(genus["species"]) > 1:
            name = f"{genus['name']} sp."
            return False, {"level": "genus", "name": name, "score": genus["score"]}, (
                f"{name} ({genus['score']:.0%} for the genus){of}: no single species reaches the threshold; "
                f"most likely {species} ({best:.0%}).")
        none = {"level": "none", "name": None, "score": None}
        if value is None:
            return False, none, (f"No confident match{of}: this model never reaches "
                                 f"{threshold['target_precision']:.0%} precision on validation photos. "
                                 "The ranked list is uncertain.")
        return False, none, (f"No confident match{of}: the best score {best:.0%} is below the threshold "
                             f"{value:.0%}. The ranked list is uncertain.")
