"""Classical classifiers on frozen embeddings, each giving a score per trained class (higher = more likely).

- ``logreg``: multinomial logistic regression (scikit-learn, lbfgs) on standardised features; scores are
  probabilities.
- ``svm``: linear SVM (``LinearSVC``) with probabilities from ``CalibratedClassifierCV`` (sigmoid). The CV
  needs every class in every fold: the number of folds is lowered to the size of the rarest class, and when
  a class has a single image (common: one herbarium sheet and no photo) no CV is possible, so the scores are
  a softmax of the SVM margins instead (same ranking, uncalibrated; recorded as ``calibration``).
- ``knn``: cosine k-nearest neighbours. Score = similarity-weighted votes of the k nearest training images
  (weight ``(1 + cos) / 2``) plus ``1e-3 x`` the similarity of the class's nearest image, so that classes
  outside the k neighbours are still ranked (by their nearest image) instead of all tying at zero, which
  would make top-5 meaningless. On unit vectors cosine similarity is a matrix product, done in chunks.
- ``ncm``: nearest class mean (prototypes): ``NearestCentroid`` on L2-normalised features; score = cosine
  similarity to each class mean.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from herbarium2field.errors import H2FError

CLASSIFIERS = ("logreg", "svm", "knn", "ncm")
#: Options per classifier and their defaults (also the list of what ``--option`` accepts).
DEFAULTS: dict[str, dict[str, Any]] = {
    "logreg": {"C": 1.0, "class_weight": "balanced", "scale": True, "max_iter": 3000},
    "svm": {"C": 0.1, "class_weight": "balanced", "scale": True, "cv": 3, "max_iter": 2000},
    "knn": {"k": 5},
    "ncm": {},
}
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


def make_classifier(classifier: str, options: dict[str, Any] | None = None) -> Classifier:
    opts = resolve_options(classifier, options)
    cls = {"logreg": LogReg, "svm": LinearSVM, "knn": CosineKNN, "ncm": NearestClassMean}[classifier]
    return cls(**opts)


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Classifier:
    """Common interface: ``fit(x, y)`` with string class ids, ``scores(x) -> [N, len(classes_)]``."""

    classes_: np.ndarray
    info: dict[str, Any]

    def fit(self, x: np.ndarray, y: np.ndarray) -> Classifier:
        raise NotImplementedError

    def scores(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _check_fit_input(x: np.ndarray, y: np.ndarray) -> None:
    if len(x) == 0:
        raise H2FError(
            "no training images to fit on", hint="check --domains and that the cache has a train split"
        )
    if len(np.unique(y)) < 2:
        raise H2FError("need at least 2 species with training images to fit a classifier")


def _scaler(scale: bool) -> Any:
    from sklearn.preprocessing import StandardScaler

    return StandardScaler() if scale else "passthrough"


class LogReg(Classifier):
    def __init__(self, C: float, class_weight: str | None, scale: bool, max_iter: int) -> None:
        self.params = {"C": float(C), "class_weight": class_weight, "max_iter": int(max_iter)}
        self.scale = bool(scale)
        self.info = {}

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogReg:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        _check_fit_input(x, y)
        self.model = make_pipeline(_scaler(self.scale), LogisticRegression(**self.params))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.model.fit(x, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            self.info["warning"] = "lbfgs did not converge; raise max_iter"
        self.classes_ = np.asarray(self.model.classes_).astype(str)
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(np.asarray(x, dtype=np.float32))


class LinearSVM(Classifier):
    def __init__(self, C: float, class_weight: str | None, scale: bool, cv: int, max_iter: int) -> None:
        self.params = {"C": float(C), "class_weight": class_weight, "max_iter": int(max_iter)}
        self.scale, self.cv = bool(scale), int(cv)
        self.info = {}

    def fit(self, x: np.ndarray, y: np.ndarray) -> LinearSVM:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import StratifiedKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.svm import LinearSVC

        _check_fit_input(x, y)
        _, counts = np.unique(y, return_counts=True)
        folds = min(self.cv, int(counts.min()))
        svc = LinearSVC(dual="auto", random_state=0, **self.params)
        if folds >= 2:
            est = CalibratedClassifierCV(
                svc, method="sigmoid", cv=StratifiedKFold(folds, shuffle=True, random_state=0)
            )
            self.info["calibration"] = f"sigmoid, {folds}-fold CV" + (
                f" (asked {self.cv}; rarest class has {counts.min()} images)" if folds < self.cv else ""
            )
        else:
            est = svc
            self.info["calibration"] = (
                f"none: softmax of SVM margins ({int((counts < 2).sum())} classes have a "
                "single training image, too few for cross-validated calibration)"
            )
        self.calibrated = folds >= 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # liblinear's convergence chatter; ranking is what we use
            self.model = make_pipeline(_scaler(self.scale), est).fit(x, y)
        self.classes_ = np.asarray(self.model.classes_).astype(str)
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.calibrated:
            return self.model.predict_proba(x)
        m = self.model.decision_function(x)
        if m.ndim == 1:  # two classes: sklearn gives the margin of the second
            m = np.stack([-m, m], axis=1)
        m = m - m.max(axis=1, keepdims=True)
        e = np.exp(m)
        return e / e.sum(axis=1, keepdims=True)


class CosineKNN(Classifier):
    def __init__(self, k: int) -> None:
        if int(k) < 1:
            raise H2FError(f"knn option k must be at least 1, got {k}")
        self.k = int(k)
        self.info = {}

    def fit(self, x: np.ndarray, y: np.ndarray) -> CosineKNN:
        _check_fit_input(x, y)
        self.classes_, codes = np.unique(np.asarray(y).astype(str), return_inverse=True)
        order = np.argsort(codes, kind="stable")  # training images grouped by class for per-class maxima
        self.x = l2n(x)[order]
        self.codes = codes[order]
        self.starts = np.searchsorted(self.codes, np.arange(len(self.classes_)))
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        q = l2n(x)
        n_cls, k = len(self.classes_), min(self.k, len(self.x))
        out = np.zeros((len(q), n_cls), dtype=np.float64)
        for s in range(0, len(q), _CHUNK):
            sim = q[s : s + _CHUNK] @ self.x.T  # [n, M]
            nearest = np.maximum.reduceat(sim, self.starts, axis=1)  # best image of each class
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            w = (1.0 + np.take_along_axis(sim, top, axis=1)) / 2.0
            votes = np.zeros((len(sim), n_cls))
            np.add.at(votes, (np.repeat(np.arange(len(sim)), k), self.codes[top].ravel()), w.ravel())
            out[s : s + _CHUNK] = votes + 1e-3 * (1.0 + nearest) / 2.0
        return out


class NearestClassMean(Classifier):
    def __init__(self) -> None:
        self.info = {}

    def fit(self, x: np.ndarray, y: np.ndarray) -> NearestClassMean:
        from sklearn.neighbors import NearestCentroid

        _check_fit_input(x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "many classes for few samples": expected here
            nc = NearestCentroid().fit(l2n(x), np.asarray(y).astype(str))
        self.classes_ = np.asarray(nc.classes_).astype(str)
        self.centroids = l2n(nc.centroids_)
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        return l2n(x) @ self.centroids.T
