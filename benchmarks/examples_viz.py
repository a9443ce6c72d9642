"""Realistic fake example of every evaluation figure, to look at while changing the plots.

100 species (60 with pairs, 40 without), ~5,000 embeddings from Gaussian clusters with a domain offset,
and two "runs": a softmax-like one where field photos form their own island, and an ArcFace-like one where
they land on their species' sheets. Writes PNGs, the t-SNE CSV and a comparison table to
``benchmarks/results/examples/``.

    .venv/bin/python benchmarks/examples_viz.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS  # noqa: E402
from herbarium2field.io import atomic_write_text  # noqa: E402
from herbarium2field.scoring.metrics import evaluate, group_masks  # noqa: E402
from herbarium2field.viz.compare import comparison_markdown, comparison_table, plot_comparison  # noqa: E402
from herbarium2field.viz.confusion import plot_confusion  # noqa: E402
from herbarium2field.viz.curves import plot_training_curves  # noqa: E402
from herbarium2field.viz.tsne import plot_tsne, save_tsne_csv, tsne_panel  # noqa: E402

OUT = RESULTS / "examples"
GENERA = [
    "Abutilon",
    "Acacia",
    "Cecropia",
    "Inga",
    "Miconia",
    "Piper",
    "Psychotria",
    "Solanum",
    "Vismia",
    "Clidemia",
    "Ficus",
    "Ocotea",
    "Eugenia",
    "Casearia",
    "Palicourea",
    "Passiflora",
    "Heliconia",
]


def fake_species(n: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    ids = sorted(rng.choice(np.arange(10000, 400000), size=n, replace=False).tolist())
    names = [
        f"{GENERA[i % len(GENERA)]} {w}{'ii' if i % 3 else 'ensis'} L."
        for i, w in enumerate(
            rng.choice(
                ["alba", "nigra", "rubra", "grand", "macro", "micro", "lanc", "pilos", "sylvat"], size=n
            )
        )
    ]
    return [str(i) for i in ids], names


def fake_embeddings(
    n_cls: int, with_pairs: np.ndarray, mix: float, rng: np.random.Generator, dim: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Long-tailed herbarium sheets per class, field photos for with-pairs classes (plus test photos of all).

    ``mix`` in [0, 1]: 0 = field photos sit at a shared domain offset (their own island), 1 = on their class.
    """
    genus = rng.normal(size=(len(GENERA), dim))
    centres = genus[np.arange(n_cls) % len(GENERA)] * 0.8 + rng.normal(size=(n_cls, dim)) * 0.7
    domain_shift = rng.normal(size=dim) * 0.9
    n_herb = np.clip((rng.pareto(1.2, size=n_cls) * 20 + 12).astype(int), 12, 160)
    X, y, d = [], [], []
    for c in range(n_cls):
        h = centres[c] + rng.normal(scale=0.75, size=(n_herb[c], dim))
        X.append(h)
        y += [c] * n_herb[c]
        d += ["herbarium"] * n_herb[c]
        n_f = int(rng.integers(6, 25)) if with_pairs[c] else int(rng.integers(1, 4))  # + a few test photos
        f = (
            mix * centres[c]
            + (1 - mix) * 0.35 * centres[c]
            + (1 - mix) * domain_shift
            + rng.normal(scale=0.85, size=(n_f, dim))
        )
        X.append(f)
        y += [c] * n_f
        d += ["field"] * n_f
    return np.vstack(X), np.asarray(y), np.asarray(d)


def fake_curves(rng: np.random.Generator, warmup: int, epochs: int, level: float) -> pd.DataFrame:
    rows = []
    for e in range(epochs):
        stage = "warmup" if e < warmup else "finetune"
        t = (e + 1) / epochs
        top1 = level * (1 - np.exp(-3 * t)) + rng.normal(scale=0.01)
        rows.append(
            {
                "epoch": e,
                "stage": stage,
                "train_loss": 4.6 * np.exp(-2.5 * t) + 0.2 + rng.normal(scale=0.03),
                "val_loss": 4.6 * np.exp(-2.0 * t) + 0.6 + rng.normal(scale=0.05),
                "val_top1": top1,
                "val_top5": min(1.0, top1 + 0.2),
                "val_top1_with_pairs": top1 + 0.08,
                "val_top5_with_pairs": min(1.0, top1 + 0.27),
                "val_top1_without_pairs": max(0.0, top1 - 0.15),
                "val_top5_without_pairs": top1 + 0.05,
                "lr_head": 1e-3,
                "lr_backbone": 0.0 if stage == "warmup" else 1e-4,
                "images_per_s": 120.0,
                "epoch_time_s": 60.0,
            }
        )
    return pd.DataFrame(rows)


def tsne_figures(ids: list[str], names: list[str], with_pairs: np.ndarray) -> None:
    panels = []
    for title, mix in (("softmax (cross-entropy)", 0.15), ("ArcFace (additive angular margin)", 0.85)):
        X, y, d = fake_embeddings(len(ids), with_pairs, mix, np.random.default_rng(1))
        t0 = time.perf_counter()
        panels.append(tsne_panel(title, X, [ids[i] for i in y], [names[i] for i in y], d, with_pairs[y]))
        print(f"{title}: {len(y)} points, t-SNE + numbers in {time.perf_counter() - t0:.1f} s")
    plot_tsne(
        panels, OUT / "tsne_species.png", title="Training embeddings: herbarium sheets and field photos"
    )
    plot_tsne(panels, OUT / "tsne_group.png", color_by="group", title="Training embeddings by species group")
    plot_tsne(panels, OUT / "tsne_cols.png", layout="cols")
    save_tsne_csv(panels, OUT / "tsne.csv")


def evaluation_figures(
    ids: list[str], names: list[str], with_pairs: np.ndarray, rng: np.random.Generator
) -> None:
    """Test set: 207 field photos, scores from three fake model / mode combinations."""
    n_cls = len(ids)
    y_test = rng.integers(0, n_cls, size=207)
    results = []
    for run, mode, strength in (
        ("softmax", "classifier", 1.2),
        ("arcface", "classifier", 2.0),
        ("arcface", "prototype", 2.3),
    ):
        s = rng.normal(size=(207, n_cls))
        s[np.arange(207), y_test] += np.where(with_pairs[y_test], strength, strength * 0.55)
        m = evaluate(s, y_test, group_masks(y_test, ids, with_pairs), n_boot=1000)
        results.append({"run": run, "mode": mode, "metrics": m})
        if run == "arcface" and mode == "classifier":
            plot_confusion(
                y_test,
                s.argmax(axis=1),
                ids,
                names,
                with_pairs,
                OUT / "confusion.png",
                title="arcface / classifier: test confusion (row-normalised)",
            )
            small = y_test < 12
            plot_confusion(
                y_test[small],
                s[small, :12].argmax(axis=1),
                ids[:12],
                names[:12],
                with_pairs[:12],
                OUT / "confusion_small.png",
            )
    table = comparison_table(results)
    markdown = comparison_markdown(table)
    atomic_write_text(OUT / "comparison.md", markdown + "\n")
    print(markdown)
    plot_comparison(table, OUT / "comparison.png")

    curves = {"softmax": fake_curves(rng, 3, 20, 0.45), "arcface": fake_curves(rng, 5, 25, 0.6)}
    plot_training_curves(curves["arcface"], OUT / "curves_one.png", title="arcface: training")
    plot_training_curves(curves, OUT / "curves_two.png", title="softmax vs arcface")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-tsne", action="store_true", help="only the fast figures (no t-SNE, ~30 s saved)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n_cls = 100
    ids, names = fake_species(n_cls, rng)
    with_pairs = np.zeros(n_cls, dtype=bool)
    with_pairs[rng.choice(n_cls, size=60, replace=False)] = True
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.skip_tsne:
        tsne_figures(ids, names, with_pairs)
    evaluation_figures(ids, names, with_pairs, rng)
    print(f"figures in {OUT}")


if __name__ == "__main__":
    main()
