"""The confusion matrix figure, readable at 100 species: which species are taken for which.

Rows are the true species, row-normalised (a row is "where this species' test photos went"), ordered by
group (with pairs, then without pairs) and then by class order, with a line between the groups, so the
reader sees at once whether the species without field photos are the ones that leak. Rows without test
images are grey, not white, so "no test photo" is not mistaken for "never predicted".
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.ticker import PercentFormatter

from herbarium2field.errors import H2FError
from herbarium2field.scoring.metrics import confusion_counts, species_names, with_pairs_mask
from herbarium2field.viz.style import plt, save_figure

CELL_NUMBERS_MAX = 30  # above this many classes, per-cell numbers are unreadable and are left out
TICK_LABELS_MAX = 150  # above this many classes, tick labels are dropped
NO_TEST_COLOR = "#d9d9d9"
# White -> blue -> dark blue: sequential, single-hue family (safe for colour-blind readers), zero stays white.
CMAP = LinearSegmentedColormap.from_list("h2f_blues", ["#ffffff", "#9ecae1", "#3182bd", "#08306b"])


def plot_confusion(
    labels: Any,
    preds: Any,
    class_ids: Sequence[str],
    species: Mapping[str, str] | Sequence[str],
    with_pairs: Collection[str] | Any,
    out_png: str | Path,
    *,
    title: str = "Confusion matrix (row-normalised)",
) -> Path:
    """Row-normalised confusion matrix of top-1 predictions, grouped by with / without pairs.

    ``labels`` and ``preds`` are class indices into ``class_ids`` (``-1`` labels are skipped and counted in
    the caption). ``with_pairs``: class ids that have field photos in training, or a bool per class.
    Up to 30 classes the cells carry percentages and ticks carry species names; up to 150 ticks carry class
    ids in small type; beyond that, ticks are dropped.
    """
    ids = [str(c) for c in class_ids]
    n = len(ids)
    if n == 0:
        raise H2FError("plot_confusion needs at least one class")
    names = species_names(ids, species)
    wp = with_pairs_mask(ids, with_pairs)
    counts = confusion_counts(labels, preds, n)
    order = np.concatenate([np.flatnonzero(wp), np.flatnonzero(~wp)])
    m = counts[np.ix_(order, order)].astype(float)
    row_n = m.sum(axis=1)
    norm = np.divide(m, row_n[:, None], out=np.zeros_like(m), where=row_n[:, None] > 0)
    shown = np.ma.masked_array(norm, mask=np.broadcast_to((row_n == 0)[:, None], norm.shape))
    n_wp = int(wp.sum())

    side = float(np.clip(0.09 * n + 3.5, 5.0, 14.0))
    fig, ax = plt.subplots(figsize=(side + 1.6, side))
    cmap = CMAP.with_extremes(bad=NO_TEST_COLOR)
    im = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, shrink=0.7, format=PercentFormatter(1.0))
    cb.set_label("share of the true species' test photos")

    if 0 < n_wp < n:
        for pos in (n_wp - 0.5,):
            ax.axhline(pos, color="#D55E00", linewidth=1.2)
            ax.axvline(pos, color="#D55E00", linewidth=1.2)
    if n <= CELL_NUMBERS_MAX:
        for i in range(n):
            for j in range(n):
                if m[i, j] > 0:
                    v = norm[i, j]
                    ax.text(
                        j,
                        i,
                        f"{100 * v:.0f}%",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > 0.55 else "#08306b",
                    )
    if n <= TICK_LABELS_MAX:
        ticks = np.arange(n)
        if n <= CELL_NUMBERS_MAX:
            labels_txt = [f"{ids[k]} {names[k]}"[:32] for k in order]
            fs = 8.0
        else:
            labels_txt = [ids[k] for k in order]
            fs = float(np.clip(600.0 / n, 3.0, 7.0))
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels_txt, rotation=90, fontsize=fs)
        ax.set_yticks(ticks)
        ax.set_yticklabels(labels_txt, fontsize=fs)
        for tick in (*ax.get_xticklabels(), *ax.get_yticklabels()):
            tick.set_color("#000000")
        for k, (tx, ty) in enumerate(zip(ax.get_xticklabels(), ax.get_yticklabels(), strict=True)):
            if k >= n_wp:  # without pairs: same red as the dataset balance figure
                tx.set_color("#a33a00")
                ty.set_color("#a33a00")
        ax.tick_params(length=1.5, pad=1.5)
    else:
        ax.set_xticks([])
        ax.set_yticks([])

    y = np.asarray(labels)
    n_img = int((y >= 0).sum())
    n_unknown = int((y < 0).sum())
    diag = np.diag(m)
    acc_wp = diag[:n_wp].sum() / max(row_n[:n_wp].sum(), 1)
    acc_wo = diag[n_wp:].sum() / max(row_n[n_wp:].sum(), 1)
    parts = [
        f"top-1 with pairs {100 * acc_wp:.1f}% (n={int(row_n[:n_wp].sum())})",
        f"without pairs {100 * acc_wo:.1f}% (n={int(row_n[n_wp:].sum())})",
    ]
    ax.set_title(f"{title}\n" + "  ·  ".join(parts), fontsize=10)
    caption = f"predicted species ({n_wp} with pairs | {n - n_wp} without pairs, red ticks)"
    ax.set_xlabel(caption)
    extra = f"; {n_unknown} image(s) of unknown species left out" if n_unknown else ""
    ax.set_ylabel(f"true species ({n_img} test images; grey rows: no test image{extra})")
    return save_figure(fig, out_png)
