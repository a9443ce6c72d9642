"""Identification as a service: photos of one plant in; ranked species with the herbarium sheets that back
each answer out. Used by ``h2f identify`` and ``h2f serve`` alike, so both give the same JSON.

JSON answer (``Identifier.identify``)::

    {
      "model":      {"run", "kind", "backend", "species"},
      "photos":     [{"name"}],                       # in the order given
      "combine":    "probabilities" | "geometric",    # how several photos became one answer
      "confidence": "softmax of the network's logits ..." | "the classifier's probability ...",
      "threshold":  {"value", "reached", "precision", "coverage", "target_precision", "validation_images"} | null,
      "confident":  true | false | null,              # null: no calibration available
      "message":    "one sentence for people",
      "results": [                                    # top-k species, best first
        {"rank", "class_id", "species", "score",      # score = combined confidence in [0, 1]
         "with_pairs",                                # species had field photos in training
         "herbarium": [{"id", "image_id", "class_id", "species", "path", "similarity", "photo"}]}
      ],
      "nearest_sheets": [ ...same sheet objects, any species... ],
      "seconds": float
    }

Sheets per species are the species' own sheets ranked by cosine similarity to the photos (exact scan of
that species' slice of the gallery), so every proposed species shows its evidence; ``nearest_sheets`` are
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
from herbarium2field.identify.calibrate import CONFIDENCE, describe, load_calibration
from herbarium2field.identify.combine import COMBINE_METHODS, combine, combine_embeddings, log_probabilities
from herbarium2field.identify.predictor import Predictor, load_predictor
from herbarium2field.retrieval.gallery import Gallery


def photo_min_side(input_size: int) -> int:
    """Short side photos are decoded to: the same as the training image cache, so a photo goes through
    exactly the resize the validation and gallery images went through."""
    return max(DEFAULT_SIZE, int(input_size))


class Identifier:
    """A run's predictor + herbarium gallery + calibration, loaded once and shared by all requests."""

    def __init__(
        self,
        run: str | Path,
        *,
        backend: str = "torch",
        threads: int | None = None,
        predictor: Predictor | None = None,
    ) -> None:
        self.run = Path(run)
        self.predictor = predictor or load_predictor(self.run, backend, threads=threads)
        self.card = self.predictor.card
        self.gallery = Gallery.load(self.run)
        self.gallery.check_model(self.run, self.card)
        self.calibration = load_calibration(self.run)
        self.with_pairs = set(self.card.with_pairs)
        self.min_side = photo_min_side(self.predictor.pre.input_size)

    @property
    def backend(self) -> str:
        return getattr(self.predictor, "backend", "torch")

    def threshold(self) -> dict[str, Any] | None:
        """The calibrated rule, or ``None`` when there is none (not calibrated, or no validation photos)."""
        c = self.calibration
        if c is None or not c.get("n"):
            return None
        return {
            "value": c.get("threshold"),
            "reached": bool(c.get("reached")),
            "precision": c.get("precision"),
            "coverage": c.get("coverage"),
            "target_precision": c.get("target_precision"),
            "validation_images": c.get("n"),
            "text": describe(c),
        }

    def identify(
        self,
        images: Sequence[Image.Image],
        names: Sequence[str] | None = None,
        *,
        top_k: int = 5,
        sheets: int = 3,
        nearest: int = 6,
        method: str = "probabilities",
    ) -> dict[str, Any]:
        """Identify one plant from one or more photos (see the module doc for the answer's layout)."""
        if method not in COMBINE_METHODS:
            raise ValueError(f"unknown combination {method!r}")
        start = time.perf_counter()
        names = list(names) if names is not None else [f"photo {i + 1}" for i in range(len(images))]
        emb, scores = self.predictor.predict(list(images))
        probs = combine(log_probabilities(scores, self.predictor.score_kind), method)
        top_k = max(1, min(top_k, len(probs)))
        order = np.argsort(-probs, kind="stable")[:top_k]
        queries = emb if method == "probabilities" else combine_embeddings(emb)[None]
        results = []
        for rank, ci in enumerate(order, 1):
            cid = self.card.class_ids[int(ci)]
            results.append(
                {
                    "rank": rank,
                    "class_id": cid,
                    "species": self.card.species[int(ci)],
                    "score": round(float(probs[ci]), 4),
                    "with_pairs": cid in self.with_pairs,
                    "herbarium": [m.to_dict() for m in self.gallery.best_in_class(queries, cid, sheets)],
                }
            )
        best = float(probs[order[0]])
        threshold = self.threshold()
        confident, message = self._verdict(best, results[0]["species"], threshold, len(images))
        return {
            "model": {
                "run": self.card.name,
                "kind": self.card.kind,
                "backend": self.backend,
                "species": len(self.card.class_ids),
            },
            "photos": [{"name": n} for n in names],
            "combine": method,
            "confidence": CONFIDENCE[self.predictor.score_kind],
            "threshold": threshold,
            "confident": confident,
            "message": message,
            "results": results,
            "nearest_sheets": [m.to_dict() for m in self.gallery.nearest(queries, nearest)]
            if nearest
            else [],
            "seconds": round(time.perf_counter() - start, 4),
        }

    @staticmethod
    def _verdict(
        best: float, species: str, threshold: dict[str, Any] | None, photos: int
    ) -> tuple[bool | None, str]:
        of = f" from {photos} photos" if photos > 1 else ""
        if threshold is None:
            return (
                None,
                f"Most likely {species} ({best:.0%}){of}; no confidence threshold is calibrated for this model.",
            )
        value = threshold.get("value")
        if value is None:
            return False, (
                f"No confident match{of}: this model never reaches "
                f"{threshold['target_precision']:.0%} precision on validation photos. "
                f"The ranked list is uncertain."
            )
        if best >= value:
            return True, f"{species} ({best:.0%}){of}."
        return False, (
            f"No confident match{of}: the best score {best:.0%} is below the threshold "
            f"{value:.0%}. The ranked list is uncertain."
        )
