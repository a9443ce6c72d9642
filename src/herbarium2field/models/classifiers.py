"""Classical classifiers on frozen embeddings, as scikit-learn estimators (``clone``, ``GridSearchCV``, ...).

All four take string class ids and give ``predict_proba(X) -> [N, len(classes_)]`` (rows sum to 1) and
``predict(X)`` (the most probable class id). Fit notes worth showing the user are in ``info_``.

- ``logreg``: multinomial logistic regression (lbfgs) on standardised features; ``info_["warning"]`` when
  lbfgs did not converge.
- ``svm``: linear SVM (``LinearSVC``) with probabilities from ``CalibratedClassifierCV`` (sigmoid). The CV
  needs every class in every fold: the number of folds is lowered to the size of the rarest class, and when
  a class has a single image (common: one herbarium sheet and no photo) no CV is possible, so the
  probabilities are a softmax of the SVM margins instead (same ranking, uncalibrated; recorded in
  ``info_["calibration"]``).
- ``knn``: cosine k-nearest neighbours. Score = similarity-weighted votes of the k nearest training images
  (weight ``(1 + cos) / 2``) plus ``1e-3 x`` the similarity of the class's nearest image, so that classes
  outside the k neighbours are still ranked (by their nearest image) instead of all tying at zero, which
  would make top-5 meaningless. The probability is each class's share of the row's total score (a positive
  rescaling, so the ranking is exactly the scores'). On unit vectors cosine similarity is a matrix product,
  done in chunks.
- ``ncm``: nearest class mean (prototypes) on L2-normalised features; the probability is a softmax of the
  cosine similarities to the L2-normalised class means with the fixed scale :data:`NCM_SCALE` (monotone,
  so the ranking is exactly the cosines').
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from herbarium2field.errors import H2FError

CLASSIFIERS = ("logreg", "svm", "knn", "ncm")
#: Options per classifier and their defaults (also the list of what ``--option`` accepts).
DEFAULTS: dict[str, dict[str, Any]] = {
    "logreg": {"C": 1.0, "class_weight": "balanced", "scale": True, "max_iter": 3000},
    "svm": {"C": 0.1, "class_weight": "balanced", "scale": True, "cv": 3, "max_iter": 2000},
    "knn": {"k": 5},
    "ncm": {},
}
#: ncm probabilities are ``softmax(NCM_SCALE * cos)``: the ArcFace head's default scale, so an ncm confidence
#: reads like a network's (the "no confident match" threshold is calibrated on validation photos anyway).
NCM_SCALE = 15.0
_CHUNK = 4096


def resolve_options(classifier: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults updated with ``options``; H2FError for an unknown classifier or option."""
    if classifier not in CLASSIFIERS:
        raise H2FError(f"unknown classifier {classifier!r}", hint=f"use one of {', '.join(CLASSIFIERS)}")
    out = dict(DEFAULTS[classifier])
    for k, v in (options or {}).items():
        if k not in out:
            known = ", ".join(DEFAULTS[classifier]) or "none"
            raise H2FError(f"unknown option {k!r} for {classifier}", hint=f"options of {classifier}: {known}")
        out[k] = v
    if "class_weight" in out and out["class_weight"] in ("none", "None", ""):
        out["class_weight"] = None
    return out


def make_classifier(classifier: str, options: dict[str, Any] | None = None) -> FrozenFeatureClassifier:
    """An unfitted estimator for ``classifier`` with its defaults updated by ``options``."""
    opts = resolve_options(classifier, options)
    cls = {"logreg": LogReg, "svm": LinearSVM, "knn": CosineKNN, "ncm": NearestClassMean}[classifier]
    return cls(**opts)


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _softmax(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _scaler(scale: bool) -> Any:
    from sklearn.preprocessing import StandardScaler

    return StandardScaler() if scale else "passthrough"


class FrozenFeatureClassifier(ClassifierMixin, BaseEstimator):
    """Shared plumbing: input checks with user-facing errors, ``classes_`` as string ids, ``predict``."""

    def _validate_fit(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(X float32 [N, D], y as str [N])``; H2FError for user mistakes (no rows, a single class)."""
        if len(X) == 0:
            raise H2FError(
                "no training images to fit on", hint="check --domains and that the cache has a train split"
            )
        X, y = validate_data(self, X, y, dtype=np.float32)  # the precision of the embedding cache
        y = np.asarray(y).astype(str)
        classes = np.unique(y)
        if len(classes) < 2:
            raise H2FError(
                f"need at least 2 species with training images to fit a classifier, got {len(classes)}"
            )
        self.classes_ = classes
        self.info_: dict[str, Any] = {}
        return X, y

    def _validate_predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, dtype=np.float32, reset=False)

    def predict_proba(self, X: Any) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class id of each row."""
        p = self.predict_proba(X)
        return self.classes_[p.argmax(axis=1)]


class LogReg(FrozenFeatureClassifier):
    """Multinomial logistic regression (lbfgs), optionally on standardised features."""

    def __init__(
        self, C: float = 1.0, class_weight: str | None = "balanced", scale: bool = True, max_iter: int = 3000
    ) -> None:
        self.C = C
        self.class_weight = class_weight
        self.scale = scale
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any) -> LogReg:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        X, y = self._validate_fit(X, y)
        lr = LogisticRegression(C=float(self.C), class_weight=self.class_weight, max_iter=int(self.max_iter))
        self.pipeline_ = make_pipeline(_scaler(bool(self.scale)), lr)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.pipeline_.fit(X, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            self.info_["warning"] = "lbfgs did not converge; raise max_iter"
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        X = self._validate_predict(X)
        return self.pipeline_.predict_proba(X)


class LinearSVM(FrozenFeatureClassifier):
    """Linear SVM: sigmoid-calibrated probabilities if every class has 2+ images, else softmax of margins."""

    def __init__(
        self,
        C: float = 0.1,
        class_weight: str | None = "balanced",
        scale: bool = True,
        cv: int = 3,
        max_iter: int = 2000,
    ) -> None:
        self.C = C
        self.class_weight = class_weight
        self.scale = scale
        self.cv = cv
        self.max_iter = max_iter

    def fit(self, X: Any, y: Any) -> LinearSVM:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import StratifiedKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.svm import LinearSVC

        X, y = self._validate_fit(X, y)
        _, counts = np.unique(y, return_counts=True)
        cv = int(self.cv)
        folds = min(cv, int(counts.min()))
        svc = LinearSVC(
            C=float(self.C),
            class_weight=self.class_weight,
            max_iter=int(self.max_iter),
            dual="auto",
            random_state=0,
        )
        est: Any = svc
        if folds >= 2:
            est = CalibratedClassifierCV(
                svc, method="sigmoid", cv=StratifiedKFold(folds, shuffle=True, random_state=0)
            )
            self.info_["calibration"] = f"sigmoid, {folds}-fold CV" + (
                f" (asked {cv}; rarest class has {counts.min()} images)" if folds < cv else ""
            )
        else:
            self.info_["calibration"] = (
                f"none: softmax of SVM margins ({int((counts < 2).sum())} classes have a "
                "single training image, too few for cross-validated calibration)"
            )
        self.calibrated_ = folds >= 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # liblinear's convergence chatter; ranking is what we use
            self.pipeline_ = make_pipeline(_scaler(bool(self.scale)), est).fit(X, y)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        X = self._validate_predict(X)
        if self.calibrated_:
            return self.pipeline_.predict_proba(X)
        m = self.pipeline_.decision_function(X)
        if m.ndim == 1:  # two classes: sklearn gives the margin of the second
            m = np.stack([-m, m], axis=1)
        return _softmax(m)


class CosineKNN(FrozenFeatureClassifier):
    """Cosine k-nearest neighbours with similarity-weighted votes and a nearest-image tie-breaker."""

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def fit(self, X: Any, y: Any) -> CosineKNN:
        k = self.k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise H2FError(f"knn option k must be a whole number of at least 1, got {k!r}")
        X, y = self._validate_fit(X, y)
        codes = np.searchsorted(self.classes_, y)
        order = np.argsort(codes, kind="stable")  # training images grouped by class for per-class maxima
        self.train_x_ = l2n(X)[order]
        self.train_codes_ = codes[order]
        self.class_starts_ = np.searchsorted(self.train_codes_, np.arange(len(self.classes_)))
        return self

    def votes(self, X: Any) -> np.ndarray:
        """Unnormalised scores ``[N, n_classes]`` (votes + tie-breaker) that ``predict_proba`` rescales."""
        q = l2n(self._validate_predict(X))
        n_cls, k = len(self.classes_), min(int(self.k), len(self.train_x_))
        out = np.zeros((len(q), n_cls), dtype=np.float64)
        for s in range(0, len(q), _CHUNK):
            sim = q[s : s + _CHUNK] @ self.train_x_.T  # [n, M]
            nearest = np.maximum.reduceat(sim, self.class_starts_, axis=1)  # best image of each class
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            w = (1.0 + np.take_along_axis(sim, top, axis=1)) / 2.0
            votes = np.zeros((len(sim), n_cls))
            np.add.at(votes, (np.repeat(np.arange(len(sim)), k), self.train_codes_[top].ravel()), w.ravel())
            out[s : s + _CHUNK] = votes + 1e-3 * (1.0 + nearest) / 2.0
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        v = self.votes(X)
        return v / np.maximum(v.sum(axis=1, keepdims=True), 1e-300)


class NearestClassMean(FrozenFeatureClassifier):
    """Nearest class mean: cosine similarity to the L2-normalised mean of each class's normalised features."""

    def fit(self, X: Any, y: Any) -> NearestClassMean:
        from sklearn.neighbors import NearestCentroid

        X, y = self._validate_fit(X, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "many classes for few samples": expected here
            nc = NearestCentroid().fit(l2n(X), y)
        assert (nc.classes_ == self.classes_).all()
        self.centroids_ = l2n(nc.centroids_)
        return self

    def similarities(self, X: Any) -> np.ndarray:
        """Cosine similarity ``[N, n_classes]`` to each class mean (what ``predict_proba`` softmaxes)."""
        return l2n(self._validate_predict(X)) @ self.centroids_.T

    def predict_proba(self, X: Any) -> np.ndarray:
        return _softmax(NCM_SCALE * self.similarities(X))
