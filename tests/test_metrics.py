"""Identification metrics: hand-computed cases, agreement with scikit-learn, bootstrap behaviour."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import top_k_accuracy_score

from herbarium2field.errors import H2FError
from herbarium2field.scoring.metrics import (
    ScoreError,
    evaluate,
    group_masks,
    macro_accuracy,
    mean_reciprocal_rank,
    paired_diff,
    per_class,
    predictions_table,
    ranks,
    top_confusions,
    topk_accuracy,
)

# 4 images, 3 classes; true classes 0, 1, 2, 0.
S = np.array(
    [
        [0.9, 0.1, 0.0],  # true 0: rank 1
        [0.5, 0.2, 0.3],  # true 1: rank 3
        [0.1, 0.6, 0.3],  # true 2: rank 2
        [0.2, 0.7, 0.1],  # true 0: rank 2
    ]
)
Y = np.array([0, 1, 2, 0])
IDS = ["101", "202", "303"]
NAMES = {"101": "Aus bus", "202": "Cus dus", "303": "Eus fus"}


def test_ranks_and_mrr_by_hand() -> None:
    assert ranks(S, Y).tolist() == [1, 3, 2, 2]
    assert topk_accuracy(S, Y, 1) == pytest.approx(1 / 4)
    assert topk_accuracy(S, Y, 2) == pytest.approx(3 / 4)
    assert mean_reciprocal_rank(S, Y) == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 / 2) / 4)
    # per class top-1: class 0 -> 1/2, class 1 -> 0, class 2 -> 0
    assert macro_accuracy(S, Y) == pytest.approx((0.5 + 0 + 0) / 3)


def test_ties_are_pessimistic() -> None:
    s = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, 1.0]])
    y = np.array([0, 2, 1])
    # tie with one other class -> rank 2; all tied -> rank C; tie below a higher class -> 1 + 1 + 1
    assert ranks(s, y).tolist() == [2, 3, 3]
    assert topk_accuracy(s, y, 1) == 0.0
    # a constant scorer is never rewarded: everything at rank C
    const = np.zeros((5, 4))
    assert ranks(const, np.arange(5) % 4).tolist() == [4] * 5
    assert topk_accuracy(const, np.arange(5) % 4, 3) == 0.0


def test_k_larger_than_classes_and_unknown_label() -> None:
    y = np.array([0, 1, -1, 0])
    assert ranks(S, y)[2] == 4  # C + 1
    assert topk_accuracy(S, y, 3) == pytest.approx(3 / 4)
    assert topk_accuracy(S, y, 100) == pytest.approx(3 / 4)  # the unknown stays wrong at every k
    assert mean_reciprocal_rank(S, y) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    assert macro_accuracy(S, y) == pytest.approx((0.5 + 0) / 2)  # -1 left out of the per-class average
    assert macro_accuracy(S[[2]], np.array([-1])) is None


def test_single_sample_and_empty() -> None:
    assert topk_accuracy(S[:1], Y[:1], 1) == 1.0
    assert mean_reciprocal_rank(S[1:2], Y[1:2]) == pytest.approx(1 / 3)
    assert topk_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int), 1) is None
    res = evaluate(S[:1], Y[:1], n_boot=50)
    g = res["groups"]["overall"]
    assert g["n"] == 1 and g["top1"] == 1.0 and g["ci"]["top1"] == [1.0, 1.0]


def test_agrees_with_sklearn_on_tie_free_scores() -> None:
    rng = np.random.default_rng(0)
    n, c = 300, 12
    s = rng.normal(size=(n, c))
    y = rng.integers(0, c, size=n)
    for k in (1, 2, 5, 11):
        ours = topk_accuracy(s, y, k)
        ref = top_k_accuracy_score(y, s, k=k, labels=np.arange(c))
        assert ours == pytest.approx(ref)


def test_bad_inputs_raise_clear_errors() -> None:
    bad = S.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ranks(bad, Y)
    with pytest.raises(H2FError, match="outside"):
        ranks(S, np.array([0, 1, 3, 0]))
    with pytest.raises(ScoreError, match="2-D"):
        ranks(S[0], Y[:1])
    with pytest.raises(ScoreError, match="one entry per"):
        ranks(S, Y[:3])
    with pytest.raises(ScoreError, match="positive integer"):
        topk_accuracy(S, Y, 0)
    # -inf is a legitimate score (masked class)
    masked = S.copy()
    masked[:, 2] = -np.inf
    assert ranks(masked, np.array([0, 1, 0, 0])).tolist() == [1, 2, 2, 2]
    assert ranks(masked, np.array([2, 2, 2, 2])).tolist() == [3, 3, 3, 3]  # -inf ties are pessimistic too


def test_evaluate_groups_empty_group_and_json() -> None:
    groups = group_masks(Y, IDS, {"101", "202"})
    assert groups["with_pairs"].tolist() == [True, True, False, True]
    groups["nothing"] = np.zeros(4, dtype=bool)
    res = evaluate(S, Y, groups, ks=(1, 5), n_boot=200, seed=3)
    json.dumps(res)  # plain types only
    g = res["groups"]
    assert set(g) == {"overall", "with_pairs", "without_pairs", "nothing"}
    assert g["overall"]["n"] == 4 and g["overall"]["top5"] == 1.0
    assert g["with_pairs"]["top1"] == pytest.approx(1 / 3)
    assert g["without_pairs"]["n"] == 1 and g["without_pairs"]["top1"] == 0.0
    assert g["nothing"]["n"] == 0
    assert all(g["nothing"][m] is None for m in ("top1", "top5", "mrr", "macro_top1"))
    assert all(v is None for v in g["nothing"]["ci"].values())
    with pytest.raises(ScoreError, match="reserved"):
        evaluate(S, Y, {"overall": np.ones(4, dtype=bool)})
    with pytest.raises(ScoreError, match="bool mask"):
        evaluate(S, Y, {"g": np.ones(3, dtype=bool)})


def test_unknown_labels_are_in_overall_only() -> None:
    y = np.array([0, -1, 2, 0])
    groups = group_masks(y, IDS, np.array([True, True, False]))
    assert groups["with_pairs"].tolist() == [True, False, False, True]
    assert groups["without_pairs"].tolist() == [False, False, True, False]
    res = evaluate(S, y, groups, n_boot=0)
    assert res["groups"]["overall"]["n_unknown"] == 1
    assert res["groups"]["overall"]["ci"]["top1"] is None


def test_bootstrap_is_seeded_and_contains_point() -> None:
    rng = np.random.default_rng(1)
    n, c = 207, 30
    y = rng.integers(0, c, size=n)
    s = rng.normal(size=(n, c))
    s[np.arange(n), y] += 1.5
    groups = {"half": np.arange(n) % 2 == 0}
    a = evaluate(s, y, groups, n_boot=300, seed=7)
    b = evaluate(s, y, dict(reversed(list({**groups, "x": np.arange(n) < 50}.items()))), n_boot=300, seed=7)
    c_ = evaluate(s, y, groups, n_boot=300, seed=8)
    assert a["groups"]["half"] == b["groups"]["half"]  # independent of other groups and their order
    assert a["groups"]["overall"]["ci"] != c_["groups"]["overall"]["ci"]
    for g in a["groups"].values():
        for m in ("top1", "top5", "mrr", "macro_top1"):
            lo, hi = g["ci"][m]
            assert lo <= g[m] <= hi
            assert hi - lo < 0.35


def loop_bootstrap(s: np.ndarray, y: np.ndarray, group: str, *, n_boot: int, seed: int,
                   chunks: list[int] | None = None) -> dict[str, list[float]]:
    """Reference percentile intervals by a plain loop: the same generator (seeded by the run seed and the
    group's name), one resample at a time, each metric from the public one-shot functions."""
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    n = len(y)
    idx = np.concatenate([rng.integers(0, n, size=(b, n)) for b in (chunks or [n_boot])])
    reps: dict[str, list[float]] = {"top1": [], "top5": [], "mrr": [], "macro_top1": []}
    for row in idx:
        reps["top1"].append(topk_accuracy(s[row], y[row], 1))
        reps["top5"].append(topk_accuracy(s[row], y[row], 5))
        reps["mrr"].append(mean_reciprocal_rank(s[row], y[row]))
        macro = macro_accuracy(s[row], y[row])
        if macro is not None:
            reps["macro_top1"].append(macro)
    return {m: [float(v) for v in np.quantile(vals, [0.025, 0.975])] for m, vals in reps.items()}


@pytest.mark.parametrize("n", [7, 64, 201])
def test_bootstrap_intervals_equal_a_plain_loop(n: int) -> None:
    rng = np.random.default_rng(n)
    c = 9
    y = rng.integers(0, c, size=n)
    y[::11] = -1  # unknown labels: never right, left out of the macro average
    s = rng.normal(size=(n, c))
    s[np.arange(n), np.maximum(y, 0)] += 1.0
    s[3] = s[3, 0]  # a row of ties
    groups = {"odd": np.arange(n) % 2 == 1}
    res = evaluate(s, y, groups, n_boot=400, seed=11)
    for name, mask in {"overall": np.ones(n, bool), **groups}.items():
        want = loop_bootstrap(s[mask], y[mask], name, n_boot=400, seed=11)
        got = res["groups"][name]["ci"]
        for m in ("top1", "top5", "mrr", "macro_top1"):
            assert got[m] == pytest.approx(want[m], abs=1e-12), (name, m)


def test_bootstrap_in_chunks_equals_a_plain_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resamples are drawn in memory-capped chunks; the intervals are still those of one plain loop."""
    from herbarium2field.scoring import metrics

    rng = np.random.default_rng(5)
    n, c = 50, 6
    y = rng.integers(0, c, size=n)
    s = rng.normal(size=(n, c))
    monkeypatch.setattr(metrics, "_BOOT_CELLS", 30 * n)  # 30 resamples per chunk: 30 + 30 + ... + 10
    res = evaluate(s, y, n_boot=130, seed=2)
    want = loop_bootstrap(s, y, "overall", n_boot=130, seed=2, chunks=[30, 30, 30, 30, 10])
    got = res["groups"]["overall"]["ci"]
    assert set(got) == set(want) and all(got[m] == pytest.approx(want[m], abs=1e-12) for m in want)
    assert res["bootstrap"] == {"n_boot": 130, "seed": 2, "ci": 0.95, "method": "percentile"}


def test_paired_diff_equals_a_plain_loop() -> None:
    rng = np.random.default_rng(3)
    a = (rng.random(80) < 0.4).astype(float)
    b = (rng.random(80) < 0.6).astype(float)
    idx = np.random.default_rng(9).integers(0, 80, size=(300, 80))
    diffs = [float(np.mean(b[row]) - np.mean(a[row])) for row in idx]
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    d = paired_diff(a, b, n_boot=300, seed=9)
    assert d == {"diff": round(float(np.mean(b) - np.mean(a)), 4), "ci": [round(lo, 4), round(hi, 4)], "n": 80}


def test_per_class_with_absent_species() -> None:
    s = np.vstack([S, [0.0, 0.1, 0.9]])
    y = np.array([0, 1, 0, 0, 1])  # class 2 ("303") has no test image
    s[2] = [0.1, 0.6, 0.3]  # true 0 -> predicted 1
    s[4] = [0.8, 0.15, 0.1]  # class 1's misses: s[1] -> 0 (rank 3), s[4] -> 0 (rank 2)
    df = per_class(s, y, IDS, NAMES, {"101"})
    assert df.columns.tolist() == [
        "class_id",
        "species",
        "group",
        "n_test",
        "top1",
        "top5",
        "mean_rank",
        "most_wrong_class_id",
        "most_wrong_species",
        "most_wrong_count",
    ]
    r0, r1, r2 = df.to_dict("records")
    assert r0["n_test"] == 3 and r0["top1"] == pytest.approx(1 / 3) and r0["group"] == "with pairs"
    assert r0["most_wrong_class_id"] == "202" and r0["most_wrong_count"] == 2
    assert r1["top1"] == 0.0 and r1["most_wrong_species"] == "Aus bus" and r1["most_wrong_count"] == 2
    assert r1["mean_rank"] == pytest.approx((3 + 2) / 2)
    assert r2["n_test"] == 0 and np.isnan(r2["top1"]) and pd.isna(r2["most_wrong_class_id"])
    assert r2["group"] == "without pairs"


def test_top_confusions() -> None:
    df = top_confusions(S, Y, IDS, ["a", "b", "c"], n=5)
    # misses: img1 (1 -> 0), img2 (2 -> 1), img3 (0 -> 1)
    assert df["count"].tolist() == [1, 1, 1]
    assert list(zip(df.true_class_id, df.pred_class_id, strict=True)) == [
        ("101", "202"),
        ("202", "101"),
        ("303", "202"),
    ]
    assert top_confusions(S[:1], Y[:1], IDS, NAMES).empty


def test_predictions_table_ties_and_unknown() -> None:
    s = np.array([[1.0, 1.0, 0.0], [0.2, 0.5, 0.3]])
    y = np.array([0, -1])
    df = predictions_table(s, y, ["a.jpg", "b.jpg"], IDS, NAMES, k=5)  # k clamped to 3 columns
    assert [c for c in df.columns if c.startswith("pred") and c.endswith("_class_id")] == [
        "pred1_class_id",
        "pred2_class_id",
        "pred3_class_id",
    ]
    first = df.iloc[0]
    # the tie is ordered against the true class, consistent with rank 2 and correct@1 False
    assert first.pred1_class_id == "202" and first.pred2_class_id == "101" and first["rank"] == 2
    assert not first["correct@1"] and first["correct@5"]
    second = df.iloc[1]
    assert pd.isna(second.true_class_id) and not second["correct@5"] and second["rank"] == 4
    assert second.pred1_species == "Cus dus" and second.pred1_score == pytest.approx(0.5)
    with pytest.raises(ScoreError, match="image paths"):
        predictions_table(s, y, ["a.jpg"], IDS, NAMES)
    with pytest.raises(ScoreError, match="class ids"):
        predictions_table(s, y, ["a.jpg", "b.jpg"], IDS[:2], NAMES)


def test_paired_diff_removes_shared_image_variance() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.5).astype(float)
    same = paired_diff(a, a, n_boot=200)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0]  # unpaired CIs would overlap widely instead
    b = a.copy()
    b[np.flatnonzero(a == 0)[:20]] = 1.0  # b fixes 20 of a's misses and breaks nothing
    d = paired_diff(a, b, n_boot=500)
    assert d["diff"] == pytest.approx(0.1) and 0.0 < d["ci"][0] <= 0.1 <= d["ci"][1]
    assert paired_diff([], [])["diff"] is None
    with pytest.raises(H2FError, match="equal-length"):
        paired_diff(a, a[:-1])
