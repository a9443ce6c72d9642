"""Dataset statistics: per-class counts by domain, the with/without-pairs groups, and imbalance figures.

Works from the table alone (no pixels), so the real PlantCLEF lists, which come without images, can be
described too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from herbarium2field.data.manifest import Dataset
from herbarium2field.viz.balance import plot_class_balance


@dataclass(frozen=True)
class Imbalance:
    """How uneven the training images per class are (the long tail ArcFace and the sampler must handle)."""

    classes: int
    min: int
    max: int
    median: float
    ratio: float  # max / min (inf when a class is empty)
    gini: float  # 0 = perfectly balanced, -> 1 = everything in one class
    imbalance_ratio_field: float  # herbarium sheets per field photo over the training set


def class_counts(ds: Dataset) -> pd.DataFrame:
    """One row per species: herbarium / field training images, total, test images, and the pairs group."""
    t = ds.table
    train = t[t.split == "train"]
    counts = (
        train.groupby(["class_id", "domain"], observed=False).size().unstack("domain", fill_value=0)
        .reindex(index=ds.class_ids, columns=["herbarium", "field"], fill_value=0)
    )
    test = t[(t.split == "test") & t.class_id.notna()].class_id.value_counts()
    out = pd.DataFrame(
        {
            "class_id": ds.class_ids,
            "species": [ds.species[c] for c in ds.class_ids],
            "herbarium": counts["herbarium"].to_numpy(),
            "field": counts["field"].to_numpy(),
        }
    )
    out["train_total"] = out.herbarium + out.field
    out["test"] = [int(test.get(c, 0)) for c in ds.class_ids]
    out["group"] = np.where(out.field > 0, "with pairs", "without pairs")
    return out


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = equal)."""
    v = np.sort(np.asarray(values, dtype=float))
    if v.size == 0 or v.sum() == 0:
        return 0.0
    n = v.size
    cum = np.cumsum(v)
    return float((n + 1 - 2 * (cum / cum[-1]).sum()) / n)


def imbalance(counts: pd.DataFrame) -> Imbalance:
    total = counts.train_total.to_numpy()
    lo, hi = (int(total.min()), int(total.max())) if total.size else (0, 0)
    field = int(counts.field.sum())
    return Imbalance(
        classes=len(counts),
        min=lo,
        max=hi,
        median=float(np.median(total)) if total.size else 0.0,
        ratio=float(hi / lo) if lo else float("inf"),
        gini=round(gini(total), 4),
        imbalance_ratio_field=round(float(counts.herbarium.sum() / field), 3) if field else float("inf"),
    )


def totals(ds: Dataset) -> pd.DataFrame:
    """Images per split and domain, plus the number of species in each pairs group."""
    t = ds.table
    rows = []
    for split in ("train", "test"):
        for domain in ("herbarium", "field"):
            n = int(((t.split == split) & (t.domain == domain)).sum())
            if n or split == "train":
                rows.append({"split": split, "domain": domain, "images": n})
    return pd.DataFrame(rows)


def summary(ds: Dataset) -> dict:
    """Everything ``h2f stats`` prints, as JSON-ready numbers."""
    counts = class_counts(ds)
    t = ds.table
    test = t[t.split == "test"]
    return {
        "layout": ds.layout,
        "species": len(ds.species),
        "train_herbarium": int(counts.herbarium.sum()),
        "train_field": int(counts.field.sum()),
        "test": len(test),
        "test_labelled": int(test.class_id.notna().sum()),
        "test_with_pairs": int(test.has_pairs.sum()),
        "test_without_pairs": int((~test.has_pairs & test.class_id.notna()).sum()),
        "with_pairs_classes": int((counts.group == "with pairs").sum()),
        "without_pairs_classes": int((counts.group == "without pairs").sum()),
        "imbalance": asdict(imbalance(counts)),
    }


def write_stats(ds: Dataset, out: Path) -> dict[str, Path]:
    """Write ``class_counts.csv``, ``class_counts.md``, ``summary.json`` and ``class_balance.png`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    counts = class_counts(ds)
    paths = {
        "csv": out / "class_counts.csv",
        "markdown": out / "class_counts.md",
        "json": out / "summary.json",
        "plot": out / "class_balance.png",
    }
    counts.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(_markdown(ds, counts))
    paths["json"].write_text(json.dumps(summary(ds), indent=2, default=float) + "\n")
    plot_class_balance(counts, paths["plot"], title=f"Training images per species: {ds.root.name}")
    return paths


def _markdown(ds: Dataset, counts: pd.DataFrame) -> str:
    s = summary(ds)
    imb = s["imbalance"]
    lines = [
        f"# Dataset statistics: `{ds.root}`",
        "",
        f"- species: {s['species']} ({s['with_pairs_classes']} with pairs, {s['without_pairs_classes']} without pairs)",
        f"- training images: {s['train_herbarium']} herbarium sheets, {s['train_field']} field photos",
        f"- test images: {s['test']} ({s['test_with_pairs']} of species with pairs, "
        f"{s['test_without_pairs']} without pairs)",
        f"- training images per class: min {imb['min']}, median {imb['median']:g}, max {imb['max']}, "
        f"max/min {imb['ratio']:.2f}, Gini {imb['gini']:.3f}",
        "",
        counts.sort_values(["train_total", "class_id"], ascending=[False, True]).to_markdown(index=False),
        "",
    ]
    return "\n".join(lines)

