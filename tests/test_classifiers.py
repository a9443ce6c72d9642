"""The frozen-feature classifiers as scikit-learn estimators: params, cloning, grid search, probabilities that
keep each classifier's ranking, and clear errors. (``estimator_checks`` is too strict for string-labelled
probability classifiers, so the contract is tested directly.)"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from herbarium2field.errors import H2FError
from herbarium2field.models.classifiers import CLASSIFIERS, DEFAULTS, NCM_SCALE, make_classifier


def _blobs(n_classes: int = 4, per_class: int = 12, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(n_classes, dim)) * 3
    y = np.repeat([f"sp{i}" for i in range(n_classes)], per_class)
    x = centres[np.repeat(np.arange(n_classes), per_class)] + rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def _at(deg: float, r: float = 1.0) -> list[float]:
    return [r * np.cos(np.radians(deg)), r * np.sin(np.radians(deg))]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_defaults_are_the_constructor_defaults(name):
    assert make_classifier(name).get_params() == DEFAULTS[name]
    assert make_classifier(name, {}).get_params() == type(make_classifier(name))().get_params()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_clone_keeps_params_and_is_unfitted(name):
    opts = {"logreg": {"C": 0.5}, "svm": {"cv": 2}, "knn": {"k": 2}, "ncm": {}}[name]
    x, y = _blobs()
    fitted = make_classifier(name, opts).fit(x, y)
    copy = clone(fitted)
    assert copy is not fitted and copy.get_params() == fitted.get_params() == {**DEFAULTS[name], **opts}
    with pytest.raises(NotFittedError):
        copy.predict_proba(x)
    assert not hasattr(copy, "classes_") and hasattr(fitted, "classes_")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_not_fitted_error_before_fit(name):
    clf = make_classifier(name)
    for method in (clf.predict_proba, clf.predict):
        with pytest.raises(NotFittedError):
            method(np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("name", [*CLASSIFIERS, "svm-uncalibrated"])
def test_probabilities_sum_to_one_and_predict_is_their_argmax(name):
    x, y = _blobs()
    if name == "svm-uncalibrated":
        name, y = "svm", y.copy()
        y[0] = "lonely"  # a class with one image: softmax of margins instead of calibration
    clf = make_classifier(name).fit(x, y)
    q = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32) * 3
    p = clf.predict_proba(q)
    assert p.shape == (30, len(set(y))) and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    pred = clf.predict(q)
    assert pred.dtype.kind == "U" and pred.tolist() == clf.classes_[p.argmax(axis=1)].tolist()
    assert clf.classes_.tolist() == sorted(set(y)) and clf.n_features_in_ == 8
    assert (clf.predict(x) == y).mean() > 0.9  # well-separated blobs are learned


def test_set_params_then_fit_changes_knn():
    # query at 1 degree: one "a" image right next to it, four "b" images a little further away
    x = np.array([_at(0), _at(10), _at(12), _at(-10), _at(-12)], np.float32)
    y = np.array(["a", "b", "b", "b", "b"])
    q = np.array([_at(1)], np.float32)
    knn = make_classifier("knn", {"k": 1}).fit(x, y)
    assert knn.predict(q).tolist() == ["a"]
    assert knn.set_params(k=5) is knn and knn.get_params()["k"] == 5
    assert knn.fit(x, y).predict(q).tolist() == ["b"]


def test_grid_search_picks_a_param():
    # a small tight class and a large one at 90 degrees: k=1 is right everywhere, k=25 (every training
    # image) lets the large class outvote the small one
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal([1, 0], 0.05, size=(10, 2)), rng.normal([0, 1], 0.05, size=(40, 2))])
    y = np.array(["a"] * 10 + ["b"] * 40)
    gs = GridSearchCV(make_classifier("knn"), {"k": [25, 1]}, cv=2).fit(x, y)
    assert gs.best_params_ == {"k": 1} and gs.best_score_ == 1.0
    assert gs.cv_results_["mean_test_score"][0] < 1.0
    assert gs.best_estimator_.predict(np.array([[1.0, 0.02], [0.01, 1.0]])).tolist() == ["a", "b"]
    lr = GridSearchCV(make_classifier("logreg"), {"C": [0.1, 1.0]}, cv=2).fit(x, y)
    assert lr.best_params_["C"] in (0.1, 1.0) and lr.best_score_ == 1.0
    assert lr.best_estimator_.get_params()["C"] == lr.best_params_["C"]


def test_knn_probabilities_are_the_normalised_votes():
    # three training images; the query is at 30 degrees: cos 0.866 to "a", 0.5 to "b", -0.866 to "c"
    x = np.array([_at(0), _at(90), _at(180, 3.0)], np.float32)  # length must not matter
    y = np.array(["a", "b", "c"])
    q = np.array([_at(30)], np.float32)
    cos = np.cos(np.radians([30, 60, 150]))
    near = 1e-3 * (1 + cos) / 2  # each class's single image is its nearest
    for k, voters in ((1, [0]), (2, [0, 1]), (3, [0, 1, 2])):
        votes = near.copy()
        votes[voters] += (1 + cos[voters]) / 2
        knn = make_classifier("knn", {"k": k}).fit(x, y)
        np.testing.assert_allclose(knn.votes(q)[0], votes, rtol=1e-6)
        np.testing.assert_allclose(knn.predict_proba(q)[0], votes / votes.sum(), rtol=1e-6)
        assert knn.predict_proba(q)[0].argsort().tolist() == [2, 1, 0]  # "b" beats "c" even outside the k


def test_knn_ranks_every_class():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = np.repeat(["a", "b", "c", "d", "e", "f"], 10)
    p = make_classifier("knn", {"k": 3}).fit(x, y).predict_proba(rng.normal(size=(20, 8)))
    assert p.shape == (20, 6) and all(len(set(row)) == 6 for row in p.round(12))  # no ties, top-5 meaningful
    one = make_classifier("knn", {"k": 1}).fit(x, y)
    assert one.predict(x[[3, 17, 45]] + 1e-3).tolist() == ["a", "b", "e"]


def test_ncm_uses_the_mean_of_normalised_features():
    # "a": a long vector at 0 degrees and a short one at 90 (normalised mean at 45, raw mean at ~6 degrees);
    # "b" at ~56 degrees. A query at 40 degrees is nearest "a" only when features are normalised first.
    x = np.array([_at(0, 10.0), _at(90), [1.0, 1.5]], np.float32)
    y = np.array(["a", "a", "b"])
    q = np.array([_at(40), _at(80)], np.float32)
    ncm = make_classifier("ncm").fit(x, y)
    means = np.array([_at(45), np.array([1.0, 1.5]) / np.hypot(1.0, 1.5)])
    cos = np.asarray(q, np.float64) @ means.T
    np.testing.assert_allclose(ncm.similarities(q), cos, atol=1e-6)
    e = np.exp(NCM_SCALE * cos)
    np.testing.assert_allclose(ncm.predict_proba(q), e / e.sum(axis=1, keepdims=True), rtol=1e-5)
    assert ncm.predict(q).tolist() == ["a", "b"]


def test_logreg_is_scaled_lbfgs_logistic_regression():
    x, y = _blobs()
    ours = make_classifier("logreg", {"C": 0.3}).fit(x, y)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, class_weight="balanced", max_iter=3000))
    np.testing.assert_allclose(ours.predict_proba(x), ref.fit(x, y).predict_proba(x), rtol=1e-6)
    assert ours.info_ == {}
    slow = make_classifier("logreg", {"max_iter": 1, "scale": False}).fit(x * 100, y)
    assert "did not converge" in slow.info_["warning"]


def test_svm_without_calibration_is_a_softmax_of_margins():
    x, y = _blobs()
    y[0] = "lonely"
    svm = make_classifier("svm").fit(x, y)
    assert not svm.calibrated_
    assert svm.info_["calibration"].startswith("none: softmax of SVM margins (1 classes")
    m = svm.pipeline_.decision_function(x)
    e = np.exp(m - m.max(axis=1, keepdims=True))
    np.testing.assert_allclose(svm.predict_proba(x), e / e.sum(axis=1, keepdims=True), rtol=1e-6)
    assert make_classifier("svm", {"cv": 5}).fit(*_blobs(per_class=4)).info_["calibration"] == (
        "sigmoid, 4-fold CV (asked 5; rarest class has 4 images)"
    )


def test_integer_labels_become_string_class_ids():
    x, y = _blobs(n_classes=3)
    codes = np.searchsorted(np.unique(y), y) + 7
    ncm = make_classifier("ncm").fit(x, codes)
    assert ncm.classes_.tolist() == ["7", "8", "9"] and ncm.predict(x[:1]).tolist() == ["7"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_user_mistakes_give_clear_errors(name):
    x, y = _blobs()
    clf = make_classifier(name)
    with pytest.raises(H2FError, match="no training images to fit on"):
        clf.fit(np.zeros((0, 8), np.float32), np.array([], dtype=str))
    with pytest.raises(H2FError, match="need at least 2 species with training images"):
        clf.fit(x, np.full(len(x), "only"))
    clf.fit(x, y)
    with pytest.raises(ValueError, match="X has 5 features, but .* is expecting 8 features"):
        clf.predict_proba(x[:, :5])


def test_bad_knn_k_and_options():
    x, y = _blobs()
    for k in (0, -1, 2.5, "3"):
        with pytest.raises(H2FError, match="knn option k must be a whole number of at least 1"):
            make_classifier("knn", {"k": k}).fit(x, y)
    assert make_classifier("knn", {"k": np.int64(2)}).fit(x, y).predict(x[:1]).tolist() == [y[0]]
    with pytest.raises(H2FError, match="unknown classifier 'forest'"):
        make_classifier("forest")
    with pytest.raises(H2FError, match="unknown option 'k' for logreg"):
        make_classifier("logreg", {"k": 3})
    assert make_classifier("svm", {"class_weight": "none"}).class_weight is None
