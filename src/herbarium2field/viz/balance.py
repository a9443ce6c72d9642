"""The dataset balance figure: herbarium sheets vs field photos per species, sorted by count.

This is the figure a reader of the original project expects first: it shows the long tail and which
species have no field photos at all (marked), the two facts the method is designed around.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from herbarium2field.viz.style import FIELD_COLOR, HERBARIUM_COLOR, plt, save_figure

MAX_LABELLED = 120  # above this many classes, tick labels become unreadable and are dropped


def plot_class_balance(
    counts: pd.DataFrame, out: str | Path, *, title: str = "Training images per species"
) -> Path:
    """Stacked bars (herbarium below, field above) per class, sorted by total; without-pairs classes hatched.

    ``counts`` is :func:`herbarium2field.data.stats.class_counts` output.
    """
    c = counts.sort_values(["train_total", "herbarium"], ascending=False, kind="stable").reset_index(
        drop=True
    )
    n = len(c)
    x = np.arange(n)
    width = min(24.0, max(8.0, 0.16 * n + 2))
    fig, ax = plt.subplots(figsize=(width, 4.8))
    without = (c.field == 0).to_numpy()
    bars = ax.bar(x, c.herbarium, color=HERBARIUM_COLOR, width=0.85, label="herbarium sheets")
    ax.bar(x, c.field, bottom=c.herbarium, color=FIELD_COLOR, width=0.85, label="field photos")
    for bar, w in zip(bars, without, strict=True):
        if w:
            bar.set_hatch("///")
            bar.set_edgecolor("#5a3d00")
            bar.set_linewidth(0)
    if n <= MAX_LABELLED:
        ax.set_xticks(x)
        ax.set_xticklabels(c.class_id, rotation=90, fontsize=max(4, min(8, 600 // max(n, 1))))
        for tick, w in zip(ax.get_xticklabels(), without, strict=True):
            if w:
                tick.set_color("#a33a00")
    else:
        ax.set_xticks([])
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel(
        f"species (class id), sorted by training images; {int(without.sum())} of {n} without field photos"
        " (hatched, red labels)"
    )
    ax.set_ylabel("training images")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles = [
        Patch(facecolor=HERBARIUM_COLOR, label="herbarium sheets"),
        Patch(facecolor=FIELD_COLOR, label="field photos"),
        Patch(facecolor=HERBARIUM_COLOR, hatch="///", edgecolor="#5a3d00", label="species without pairs"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    return save_figure(fig, out)
