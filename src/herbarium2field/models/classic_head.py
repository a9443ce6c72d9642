"""A fitted classical classifier as the head of a frozen backbone: embeddings in, one probability per
species of the model card out (species the classifier never saw get ``-inf``, ranked below every real one).

The alignment (:mod:`.align`) maps herbarium and field features into one space before the estimator
(:mod:`.classifiers`); new photos are field photos.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from herbarium2field.errors import H2FError

#: Score of a species the classifier never saw (below every real score).
ABSENT = float("-inf")


class ClassicHead:
    """``scores(embeddings) -> [N, C]`` in ``class_ids`` order, from a fitted scikit-learn estimator."""

    def __init__(self, estimator: Any, alignment: Any, class_ids: list[str]) -> None:
        self.estimator, self.alignment, self.class_ids = estimator, alignment, list(class_ids)
        index = {c: i for i, c in enumerate(self.class_ids)}
        trained = [str(c) for c in estimator.classes_]
        missing = sorted(set(trained) - set(index))
        if missing:
            raise H2FError(f"the classifier knows classes the model card does not: {missing[:5]}")
        self.columns = np.array([index[c] for c in trained], dtype=np.int64)

    @property
    def dim(self) -> int:
        return int(self.estimator.n_features_in_)

    def scores(self, features: np.ndarray, domain: str | np.ndarray = "field") -> np.ndarray:
        """Probabilities ``[N, C]`` for embeddings ``[N, D]``; ``domain`` matters only to ``standardize``."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise H2FError(f"features must have shape [N, {self.dim}] (this model's embedding size), "
                           f"got {tuple(x.shape)}")
        out = np.full((len(x), len(self.class_ids)), ABSENT, dtype=np.float64)
        ok = ~np.isnan(x).any(axis=1)
        if ok.any():
            dom = domain if isinstance(domain, str) else np.asarray(domain)[ok]
            out[np.ix_(np.flatnonzero(ok), self.columns)] = self.estimator.predict_proba(
                self.alignment.transform(x[ok], dom))
        out[~ok] = np.nan
        return out
