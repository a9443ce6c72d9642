"""The training-curves figure: loss, and validation top-1 / top-5 overall and per pairs group, per epoch.

Reads the per-epoch CSV that training writes (``epoch, stage, train_loss, val_loss, val_top1, val_top5,
val_top{1,5}_with_pairs, val_top{1,5}_without_pairs, lr_head, lr_backbone, images_per_s, epoch_time_s``).
The head-only warm-up (frozen backbone) is shaded and the switch to fine-tuning marked, because a jump
at that epoch is expected and should not be read as instability. Any ``val_*`` column may be missing or
empty (no validation split); those series are simply not drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, PercentFormatter

from herbarium2field.errors import H2FError
from herbarium2field.viz.style import OKABE_ITO, plt, save_figure

GROUP_SERIES = [
    ("", "overall", "-"),
    ("_with_pairs", "with pairs", "--"),
    ("_without_pairs", "without pairs", ":"),
]
SINGLE_RUN_COLORS = {
    "overall": "#000000",
    "with pairs": "#0072B2",
    "without pairs": "#D55E00",
    "train": "#0072B2",
    "val": "#D55E00",
}
RUN_COLORS = [OKABE_ITO[i] for i in (4, 5, 2, 6, 0, 1, 7, 3)]  # blue, vermillion, green, ... (yellow last)
WARMUP_SHADE = "#ececec"

Source = str | Path | pd.DataFrame


def read_metrics(source: Source) -> pd.DataFrame:
    """One row per epoch (rows logged separately for train and validation are merged), in epoch order.

    Adds ``x``: the epoch, or a running index when epochs restart at a new stage.
    """
    if isinstance(source, pd.DataFrame):
        df = source.copy()
        where = "metrics table"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise H2FError("metrics file not found", path=path, hint="pass the run's metrics.csv")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise H2FError(
                f"cannot read the metrics CSV: {e}",
                path=path,
                hint="the file must be the per-epoch CSV written by training",
            ) from e
    if "epoch" not in df.columns:
        raise H2FError(
            f"{where}: no 'epoch' column (found: {', '.join(map(str, df.columns)) or 'none'})",
            hint="the file must be the per-epoch CSV written by training",
        )
    df = df[pd.to_numeric(df["epoch"], errors="coerce").notna()].copy()
    df["epoch"] = pd.to_numeric(df["epoch"]).astype(int)
    keys = ["stage", "epoch"] if "stage" in df.columns else ["epoch"]
    if "stage" in df.columns:
        df["stage"] = df["stage"].astype(str).str.strip().str.lower()
    df = df.groupby(keys, sort=False, dropna=False).first().reset_index()  # first non-null per column
    for col in df.columns:
        if col not in ("stage",) and df[col].dtype == object:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    ep = df["epoch"].to_numpy()
    df["x"] = ep if np.all(np.diff(ep) > 0) else np.arange(len(df))
    return df.reset_index(drop=True)


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any()


def _warmup_span(df: pd.DataFrame) -> tuple[float, float] | None:
    if "stage" not in df.columns:
        return None
    w = df["stage"] == "warmup"
    if not w.any():
        return None
    xs = df.loc[w, "x"].to_numpy(dtype=float)
    return float(xs.min()) - 0.5, float(xs.max()) + 0.5


def plot_training_curves(
    metrics: Source | Mapping[str, Source] | Sequence[Source],
    out_png: str | Path,
    title: str = "Training curves",
) -> Path:
    """Loss (train solid, validation dashed) and validation top-1 / top-5 (overall solid, with pairs
    dashed, without pairs dotted) against epoch; several runs overlay in different colours.

    ``metrics``: a CSV path or DataFrame, or several as ``{label: source}`` (or a list, labelled by file
    stem / ``run N``).
    """
    if isinstance(metrics, str | Path | pd.DataFrame):
        runs = {"run": metrics}
    elif isinstance(metrics, Mapping):
        runs = dict(metrics)
    else:
        runs = {
            (Path(s).stem if not isinstance(s, pd.DataFrame) else f"run {i + 1}"): s
            for i, s in enumerate(metrics)
        }
    if not runs:
        raise H2FError("plot_training_curves needs at least one run")
    tables = {label: read_metrics(src) for label, src in runs.items()}
    single = len(tables) == 1

    fig, axes = plt.subplots(1, 3, figsize=(15.5, 4.4))
    ax_loss, ax_t1, ax_t5 = axes
    drawn: dict[str, set[str]] = {"loss": set(), "acc": set()}
    for i, df in enumerate(tables.values()):
        colour = RUN_COLORS[i % len(RUN_COLORS)]
        marker = "o" if len(df) <= 30 else None
        x = df["x"].to_numpy()
        for col, name, ls in (("train_loss", "train", "-"), ("val_loss", "val", "--")):
            if _has(df, col):
                c = SINGLE_RUN_COLORS[name] if single else colour
                ax_loss.plot(x, df[col], color=c, linestyle=ls, marker=marker, markersize=3)
                drawn["loss"].add(name)
        for ax, k in ((ax_t1, 1), (ax_t5, 5)):
            for suffix, name, ls in GROUP_SERIES:
                col = f"val_top{k}{suffix}"
                if _has(df, col):
                    c = SINGLE_RUN_COLORS[name] if single else colour
                    ax.plot(x, df[col], color=c, linestyle=ls, marker=marker, markersize=3)
                    drawn["acc"].add(name)
        span = _warmup_span(df)
        if span is not None:
            for ax in axes:
                ax.axvspan(*span, color=WARMUP_SHADE, zorder=0, linewidth=0)
                if span[1] < x.max():
                    ax.axvline(
                        span[1],
                        color="#555555" if single else colour,
                        linewidth=0.9,
                        linestyle=(0, (4, 2)),
                        zorder=1,
                    )

    ax_loss.set_title("loss")
    ax_loss.set_ylabel("loss")
    for ax, k in ((ax_t1, 1), (ax_t5, 5)):
        ax.set_title(f"validation top-{k} accuracy")
        ax.set_ylabel(f"top-{k}")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0.0, 1.0)
        if not drawn["acc"]:
            ax.text(
                0.5,
                0.5,
                "no validation accuracy logged",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="#666666",
            )
    if not drawn["loss"]:
        ax_loss.text(
            0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax_loss.transAxes, color="#666666"
        )
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle(title)

    handles: list[Any] = []
    if not single:
        handles += [
            Line2D([], [], color=RUN_COLORS[i % len(RUN_COLORS)], linewidth=2.5, label=label)
            for i, label in enumerate(tables)
        ]
    series = [("loss", name, ls, f"{name} loss") for name, ls in (("train", "-"), ("val", "--"))]
    series += [("acc", name, ls, f"val accuracy, {name}") for _, name, ls in GROUP_SERIES]
    for kind, name, ls, label in series:
        if name in drawn[kind]:
            handles.append(
                Line2D(
                    [],
                    [],
                    color=SINGLE_RUN_COLORS[name] if single else "#444444",
                    linestyle=ls,
                    label=label,
                )
            )
    if any(_warmup_span(df) is not None for df in tables.values()):
        handles.append(Patch(facecolor=WARMUP_SHADE, label="warm-up (head only, backbone frozen)"))
        handles.append(Line2D([], [], color="#555555", linestyle=(0, (4, 2)), label="start of fine-tuning"))
    axes[-1].legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8.5
    )
    fig.tight_layout()
    return save_figure(fig, out_png)
