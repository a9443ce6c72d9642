"""Evaluation figures and their numbers: t-SNE (+ silhouette, domain mixing), confusion, curves, comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from herbarium2field.errors import H2FError
from herbarium2field.scoring.metrics import confusion_counts, evaluate, group_masks
from herbarium2field.viz.compare import comparison_markdown, comparison_table, plot_comparison
from herbarium2field.viz.confusion import plot_confusion
from herbarium2field.viz.curves import plot_training_curves, read_metrics
from herbarium2field.viz.tsne import (
    TsnePanel,
    domain_mixing,
    plot_tsne,
    save_tsne_csv,
    silhouette,
    tsne_2d,
    tsne_panel,
)


def png_size(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def clusters(n_cls: int = 4, per: int = 30, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_cls, dim)) * 4
    y = np.repeat(np.arange(n_cls), per)
    return centres[y] + rng.normal(size=(y.size, dim)), y


# ------------------------------------------------------------------------------------------------ numbers


def test_tsne_is_deterministic_per_seed() -> None:
    X, _ = clusters(per=25)
    a = tsne_2d(X, perplexity=10, seed=0)
    b = tsne_2d(X, perplexity=10, seed=0)
    c = tsne_2d(X, perplexity=10, seed=1)
    assert a.shape == (100, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    s1 = tsne_2d(X[:40], perplexity=10, seed=0, backend="sklearn")
    np.testing.assert_array_equal(s1, tsne_2d(X[:40], perplexity=10, seed=0, backend="sklearn"))
    with pytest.raises(H2FError, match="backend"):
        tsne_2d(X, backend="umap")  # type: ignore[arg-type]


def test_tsne_tiny_inputs() -> None:
    assert tsne_2d(np.zeros((0, 8))).shape == (0, 2)
    assert tsne_2d(np.ones((1, 8))).shape == (1, 2)
    out = tsne_2d(np.random.default_rng(0).normal(size=(5, 8)), perplexity=30)  # perplexity clamped
    assert out.shape == (5, 2) and np.all(np.isfinite(out))
    with pytest.raises(H2FError, match="NaN"):
        tsne_2d(np.full((4, 3), np.nan))


def test_silhouette_sign() -> None:
    X, y = clusters()
    assert silhouette(X, y) > 0.5
    shuffled = np.random.default_rng(0).permutation(y)
    assert silhouette(X, shuffled) < 0.05
    assert silhouette(X, np.zeros_like(y)) is None  # one species: undefined
    assert silhouette(tsne_2d(X, perplexity=10), y, metric="euclidean") > 0.5


def test_domain_mixing_by_hand() -> None:
    e1, e2 = np.eye(2)
    rng = np.random.default_rng(0)
    sheets = np.vstack([e1 + 0.01 * rng.normal(size=(5, 2)), e2 + 0.01 * rng.normal(size=(5, 2))])
    sheet_cls = np.array([0] * 5 + [1] * 5)
    dom = ["herbarium"] * 10 + ["field"] * 2
    near_own = np.vstack([sheets, e1 * 1.02, e2 * 0.98])
    near_other = np.vstack([sheets, e2 * 1.02, e1 * 0.98])
    cls = np.concatenate([sheet_cls, [0, 1]])
    assert domain_mixing(near_own, cls, dom, k=3) == pytest.approx(1.0)
    assert domain_mixing(near_other, cls, dom, k=3) == pytest.approx(0.0)
    # a field photo among its own kind (other photos), not sheets: photo neighbours do not count
    photos = np.vstack([sheets, np.tile(-e1, (4, 1)) + 0.01 * rng.normal(size=(4, 2))])
    assert domain_mixing(
        photos, np.concatenate([sheet_cls, [0] * 4]), ["herbarium"] * 10 + ["field"] * 4, k=3
    ) == pytest.approx(0.0)
    assert domain_mixing(sheets, sheet_cls, ["herbarium"] * 10) is None  # no field photos
    assert domain_mixing(sheets, sheet_cls, ["field"] * 10) is None  # no herbarium sheets
    with pytest.raises(H2FError, match="domain"):
        domain_mixing(sheets, sheet_cls, ["photo"] * 10)


def test_domain_mixing_k_larger_than_n_and_duplicates() -> None:
    X = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # exact duplicates
    assert domain_mixing(X, [0, 0, 0], ["field", "herbarium", "herbarium"], k=50) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ figures


def fake_panels(n_cls: int = 12, per: int = 20, runs: int = 2) -> list[TsnePanel]:
    X, y = clusters(n_cls=n_cls, per=per, dim=8)
    rng = np.random.default_rng(0)
    dom = np.where(rng.random(y.size) < 0.3, "field", "herbarium")
    ids = [f"{1000 + c}" for c in y]
    names = [f"Genus species{c}" for c in y]
    pairs = y % 3 != 0
    out = []
    for r in range(runs):
        coords = rng.normal(size=(y.size, 2)) + np.c_[np.cos(y), np.sin(y)] * (3 + r)
        out.append(
            TsnePanel(
                f"run {r}",
                coords,
                ids,
                names,
                list(dom),
                list(pairs),
                silhouette=silhouette(X, y),
                mixing=domain_mixing(X, y, dom),
            )
        )
    return out


def test_plot_tsne_layouts_and_csv(tmp_path: Path) -> None:
    panels = fake_panels()
    w, h = png_size(plot_tsne(panels, tmp_path / "rows.png", title="two runs"))
    assert h > w > 600  # stacked
    w2, h2 = png_size(plot_tsne(panels, tmp_path / "cols.png", layout="cols", color_by="group"))
    assert w2 > h2
    png_size(plot_tsne(panels[:1], tmp_path / "hl.png", highlight=["1001", "1003"], n_highlight=2))
    df = pd.read_csv(save_tsne_csv(panels, tmp_path / "tsne.csv"), dtype={"class_id": str})
    assert df.columns.tolist() == ["run", "x", "y", "class_id", "species", "domain", "has_pairs"]
    assert len(df) == 2 * len(panels[0].coords) and set(df.run) == {"run 0", "run 1"}


def test_plot_tsne_one_class_and_missing_numbers(tmp_path: Path) -> None:
    p = TsnePanel(
        "one species",
        np.random.default_rng(0).normal(size=(10, 2)),
        ["7"] * 10,
        ["Aus bus"] * 10,
        ["herbarium"] * 10,
        [False] * 10,
    )
    png_size(plot_tsne([p], tmp_path / "one.png"))
    with pytest.raises(H2FError, match="entries"):
        TsnePanel("bad", np.zeros((3, 2)), ["1"], ["a"], ["field"] * 3, [True] * 3)
    with pytest.raises(H2FError, match="at least one"):
        plot_tsne([], tmp_path / "none.png")


def test_tsne_panel_end_to_end(tmp_path: Path) -> None:
    X, y = clusters(n_cls=3, per=20)
    dom = np.where(np.arange(y.size) % 4 == 0, "field", "herbarium")
    p = tsne_panel(
        "small",
        X,
        [str(c) for c in y],
        [f"sp{c}" for c in y],
        dom,
        y != 2,
        perplexity=10,
        images=[f"img{i}.jpg" for i in range(y.size)],
    )
    # 15 field photos among 45 sheets, clusters well apart: most of a photo's neighbours are its own species'
    # sheets, the rest its own species' photos (which do not count)
    assert p.coords.shape == (60, 2) and p.silhouette > 0.5 and 0.6 < p.mixing < 1.0
    df = pd.read_csv(save_tsne_csv(p, tmp_path / "one.csv"))
    assert df.columns[-1] == "image"


@pytest.mark.parametrize("n_cls", [1, 8, 60, 200])
def test_plot_confusion_sizes(tmp_path: Path, n_cls: int) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, n_cls, size=3 * n_cls)
    y[0] = -1  # unknown species: skipped
    preds = np.where(rng.random(y.size) < 0.6, np.maximum(y, 0), rng.integers(0, n_cls, size=y.size))
    ids = [str(100 + i) for i in range(n_cls)]
    w, h = png_size(
        plot_confusion(
            y,
            preds,
            ids,
            {c: f"Species {c}" for c in ids},
            {c for i, c in enumerate(ids) if i % 3},
            tmp_path / "c.png",
        )
    )
    assert 600 < h < 2600 and w > h * 0.75


def test_confusion_counts() -> None:
    m = confusion_counts([0, 1, 1, -1], [0, 0, 1, 1], 2)
    assert m.tolist() == [[1, 0], [1, 1]]
    with pytest.raises(H2FError):
        confusion_counts([0, 2], [0, 1], 2)


def curves_frame(epochs: int = 6, warmup: int = 2) -> pd.DataFrame:
    e = np.arange(epochs)
    return pd.DataFrame(
        {
            "epoch": e,
            "stage": ["warmup" if i < warmup else "finetune" for i in e],
            "train_loss": 3 - 0.3 * e,
            "val_loss": 3.2 - 0.25 * e,
            "val_top1": 0.1 * e,
            "val_top5": 0.15 * e,
            "val_top1_with_pairs": 0.12 * e,
            "val_top5_with_pairs": 0.16 * e,
            "val_top1_without_pairs": 0.05 * e,
            "val_top5_without_pairs": 0.1 * e,
            "lr_head": 1e-3,
            "lr_backbone": [0.0 if i < warmup else 1e-4 for i in e],
            "images_per_s": 100.0,
            "epoch_time_s": 10.0,
        }
    )


def test_training_curves_from_csv_and_runs(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    curves_frame().to_csv(csv, index=False)
    w, h = png_size(plot_training_curves(csv, tmp_path / "one.png", title="one run"))
    assert w > 2 * h
    other = curves_frame(9, 3).drop(columns=["val_top1_with_pairs", "val_top5_with_pairs"])
    png_size(plot_training_curves({"a": csv, "b": other}, tmp_path / "two.png", title="two runs"))
    png_size(plot_training_curves([csv], tmp_path / "list.png"))


def test_training_curves_missing_and_empty_columns(tmp_path: Path) -> None:
    df = curves_frame()
    for c in [c for c in df.columns if c.startswith("val_")]:
        df[c] = np.nan  # no validation split: empty columns
    png_size(plot_training_curves(df, tmp_path / "empty.png"))
    bare = pd.DataFrame({"epoch": [0], "train_loss": [2.0]})  # one epoch, no stage, no validation
    png_size(plot_training_curves(bare, tmp_path / "bare.png"))
    with pytest.raises(H2FError, match="not found"):
        plot_training_curves(tmp_path / "nope.csv", tmp_path / "x.png")
    with pytest.raises(H2FError, match="epoch"):
        plot_training_curves(pd.DataFrame({"loss": [1.0]}), tmp_path / "x.png")


def test_read_metrics_merges_split_rows_and_restarted_epochs() -> None:
    rows = pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1, 0, 0],
            "stage": ["warmup", "warmup", "warmup", "warmup", "finetune", "finetune"],
            "train_loss": [2.0, None, 1.5, None, 1.0, None],
            "val_top1": [None, 0.2, None, 0.3, None, 0.5],
        }
    )
    df = read_metrics(rows)
    assert df.train_loss.tolist() == [2.0, 1.5, 1.0] and df.val_top1.tolist() == [0.2, 0.3, 0.5]
    assert df.x.tolist() == [0, 1, 2]  # epochs restart at fine-tuning: running index


def results(n_runs: int = 3, n_boot: int = 100) -> list[dict]:
    rng = np.random.default_rng(0)
    ids = [str(i) for i in range(20)]
    y = rng.integers(0, 20, size=80)
    out = []
    for r in range(n_runs):
        s = rng.normal(size=(80, 20))
        s[np.arange(80), y] += r
        out.append(
            {
                "run": f"r{r}",
                "mode": "classifier",
                "metrics": evaluate(s, y, group_masks(y, ids, set(ids[:12])), n_boot=n_boot),
            }
        )
    return out


def test_comparison_table_and_markdown() -> None:
    res = results()
    t = comparison_table(res)
    assert t["rank"].tolist() == [1, 2, 3] and t.run.tolist() == ["r2", "r1", "r0"]
    for c in (
        "top1_overall",
        "top1_with_pairs_lo",
        "mrr_without_pairs_hi",
        "n_without_pairs",
        "top5_overall",
    ):
        assert c in t.columns
    md = comparison_markdown(t)
    assert md.splitlines()[0].startswith("|   rank | run") and "top-1 without pairs" in md and "[" in md
    t2 = comparison_table(res, rank_by="mrr_overall")
    assert t2["rank"].tolist() == [1, 2, 3]
    with pytest.raises(H2FError, match="rank"):
        comparison_table(res, rank_by="nope")
    with pytest.raises(H2FError, match="metrics"):
        comparison_table([{"run": "x"}])


def test_plot_comparison_with_and_without_ci(tmp_path: Path) -> None:
    w, h = png_size(plot_comparison(comparison_table(results()), tmp_path / "cmp.png"))
    assert w > 2 * h
    one = results(1, n_boot=0)  # one run, no CIs
    png_size(plot_comparison(one, tmp_path / "one.png"))
    empty_group = results(1)
    empty_group[0]["metrics"]["groups"]["without_pairs"] = {
        "n": 0,
        "top1": None,
        "top5": None,
        "mrr": None,
        "macro_top1": None,
        "ci": {},
    }
    png_size(plot_comparison(empty_group, tmp_path / "empty.png"))
