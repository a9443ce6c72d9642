"""The comparison figure and table: several runs and modes side by side, overall and per pairs group.

Input rows are ``{"run": name, "mode": "classifier" | "prototype" | ..., "metrics": evaluate() output}``.
The table is ranked by top-1 on the species *without* pairs (no field photos in training), because that
is what a cross-domain method is for; pass ``rank_by="mrr_overall"`` for PlantCLEF 2020's primary metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import PercentFormatter

from herbarium2field.errors import H2FError
from herbarium2field.scoring.metrics import GROUP_LABELS
from herbarium2field.viz.style import OKABE_ITO, plt, save_figure

GROUP_ORDER = ["overall", "with_pairs", "without_pairs"]
METRIC_LABELS = {"mrr": "MRR", "macro_top1": "macro top-1"}
ENTRY_COLORS = [OKABE_ITO[i] for i in (4, 5, 2, 6, 0, 1, 7, 3)]  # yellow last: weakest on white


def _metric_label(m: str) -> str:
    return METRIC_LABELS.get(m, m.replace("top", "top-"))


def _column_label(col: str) -> str:
    for g in sorted(GROUP_ORDER, key=len, reverse=True):
        if col.endswith("_" + g):
            return f"{_metric_label(col[: -len(g) - 1])} {GROUP_LABELS[g]}"
    return col


def _group_tick(table: pd.DataFrame, g: str) -> str:
    ns = table[f"n_{g}"].dropna().unique() if f"n_{g}" in table.columns else []
    label = GROUP_LABELS.get(g, g)
    return f"{label}\n(n={int(ns[0])})" if len(ns) == 1 else label


def comparison_table(results: Sequence[dict[str, Any]], rank_by: str = "top1_without_pairs") -> pd.DataFrame:
    """One row per (run, mode); columns ``rank, run, mode``, then ``{metric}_{group}`` with
    ``{metric}_{group}_lo`` / ``_hi`` (CI bounds, NaN when absent) and ``n_{group}``.

    ``rank`` is 1 for the best ``rank_by`` (ties share the better rank; a missing value ranks last).
    """
    rows = []
    for i, r in enumerate(results):
        try:
            run, mode, m = str(r["run"]), str(r.get("mode", "")), r["metrics"]
            groups = m["groups"]
        except (KeyError, TypeError) as e:
            raise H2FError(
                f"result {i} must look like {{'run': ..., 'mode': ..., 'metrics': evaluate(...)}}; "
                f"missing {e}"
            ) from e
        row: dict[str, Any] = {"run": run, "mode": mode}
        boot = m.get("bootstrap") or {}
        row["ci_level"] = float(boot["ci"]) if boot.get("n_boot") and boot.get("ci") is not None else np.nan
        names = [
            k for k in (groups.get("overall") or {}) if k not in ("n", "n_unknown", "n_classes_present", "ci")
        ]
        for g in list(dict.fromkeys(GROUP_ORDER + list(groups))):
            gd = groups.get(g)
            if gd is None:
                continue
            row[f"n_{g}"] = gd.get("n")
            for k in names:
                v = gd.get(k)
                row[f"{k}_{g}"] = np.nan if v is None else float(v)
                ci = (gd.get("ci") or {}).get(k)
                row[f"{k}_{g}_lo"] = np.nan if ci is None else float(ci[0])
                row[f"{k}_{g}_hi"] = np.nan if ci is None else float(ci[1])
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["rank", "run", "mode"])
    if rank_by not in df.columns:
        raise H2FError(
            f"cannot rank by {rank_by!r}: not in the results",
            hint=f"use one of {', '.join(c for c in df.columns if c[-3:] not in ('_lo', '_hi'))}",
        )
    df.insert(0, "rank", df[rank_by].rank(ascending=False, method="min", na_option="bottom").astype(int))
    df = df.sort_values(["rank", "run", "mode"], kind="stable").reset_index(drop=True)
    df.attrs["rank_by"] = rank_by
    return df


def comparison_markdown(
    table: pd.DataFrame | Sequence[dict[str, Any]],
    metrics: Sequence[str] = ("top1", "top5", "mrr"),
    digits: int = 1,
) -> str:
    """A markdown table: rank, run, mode, then each metric per group as ``52.2 [45.4-59.0]`` (percent)."""
    df = table if isinstance(table, pd.DataFrame) else comparison_table(table)
    out = pd.DataFrame({"rank": df["rank"], "run": df["run"], "mode": df["mode"]})
    for m in metrics:
        for g in GROUP_ORDER:
            col = f"{m}_{g}"
            if col not in df.columns:
                continue

            def cell(row: pd.Series, col: str = col) -> str:
                v, lo, hi = row[col], row.get(f"{col}_lo"), row.get(f"{col}_hi")
                if pd.isna(v):
                    return "–"
                text = f"{100 * v:.{digits}f}"
                if lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi)):
                    text += f" [{100 * lo:.{digits}f}–{100 * hi:.{digits}f}]"
                return text

            out[f"{_metric_label(m)} {GROUP_LABELS.get(g, g)}"] = df.apply(cell, axis=1)
    for g in GROUP_ORDER:
        if f"n_{g}" in df.columns:
            out[f"n {GROUP_LABELS.get(g, g)}"] = df[f"n_{g}"].astype("Int64")
    return out.to_markdown(index=False)


def plot_comparison(
    df: pd.DataFrame | Sequence[dict[str, Any]],
    out_png: str | Path,
    *,
    metrics: Sequence[str] = ("top1", "top5", "mrr"),
    title: str = "Runs compared by species group",
) -> Path:
    """Grouped bars: one panel per metric, species groups on the x axis, one bar per run / mode, with the
    bootstrap CI as error bars where the table has it. ``df`` is :func:`comparison_table` output (or the
    result rows themselves)."""
    table = df if isinstance(df, pd.DataFrame) else comparison_table(df)
    if table.empty:
        raise H2FError("nothing to compare: no results")
    metrics = [m for m in metrics if any(f"{m}_{g}" in table.columns for g in GROUP_ORDER)]
    if not metrics:
        raise H2FError("none of the requested metrics are in the results")
    groups = [g for g in GROUP_ORDER if any(f"{m}_{g}" in table.columns for m in metrics)]
    entries = [f"{r.run} / {r.mode}" if r.mode else str(r.run) for r in table.itertuples()]
    n_e, n_g = len(entries), len(groups)
    width = 0.8 / n_e
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(max(4.0, 1.1 + 1.2 * n_g * max(1.0, n_e * 0.35)) * len(metrics) * 0.9 + 2.5, 4.2),
        squeeze=False,
    )
    for ax, m in zip(axes[0], metrics, strict=True):
        for e, row in enumerate(table.itertuples(index=False)):
            rd = row._asdict()
            vals = np.array([rd.get(f"{m}_{g}", np.nan) for g in groups], dtype=float)
            lo = np.array([rd.get(f"{m}_{g}_lo", np.nan) for g in groups], dtype=float)
            hi = np.array([rd.get(f"{m}_{g}_hi", np.nan) for g in groups], dtype=float)
            x = np.arange(n_g) - 0.4 + width * (e + 0.5)
            ax.bar(
                x,
                np.nan_to_num(vals),
                width=width * 0.92,
                color=ENTRY_COLORS[e % len(ENTRY_COLORS)],
                label=entries[e],
                zorder=2,
            )
            has_ci = ~(np.isnan(lo) | np.isnan(hi) | np.isnan(vals))
            if has_ci.any():
                err = np.vstack([vals - lo, hi - vals])[:, has_ci]
                ax.errorbar(
                    x[has_ci],
                    vals[has_ci],
                    yerr=np.clip(err, 0, None),
                    fmt="none",
                    ecolor="#222222",
                    elinewidth=0.9,
                    capsize=2.5,
                    zorder=3,
                )
            for xi, v in zip(x, vals, strict=True):
                if np.isnan(v):
                    ax.text(
                        xi, 0.01, "n/a", ha="center", va="bottom", fontsize=6.5, rotation=90, color="#666666"
                    )
        ax.set_xticks(np.arange(n_g))
        ax.set_xticklabels([_group_tick(table, g) for g in groups])
        ax.set_ylim(0, 1.0)
        ax.set_title(_metric_label(m))
        if m.startswith("top") or m.startswith("macro"):
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            ax.set_ylabel(_metric_label(m) + " accuracy")
        else:
            ax.set_ylabel(f"{_metric_label(m)} (0..1)")
        ax.set_xlabel("species group")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    has_any_ci = any(c.endswith("_lo") and table[c].notna().any() for c in table.columns)
    rank_by = table.attrs.get("rank_by")
    legend_title = "run / mode" + (f"\n(best {_column_label(rank_by)} first)" if rank_by else "")
    axes[0, -1].legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        fontsize=8.5,
        title=legend_title,
        title_fontsize=8.5,
    )
    if has_any_ci:
        levels = sorted(set(table["ci_level"].dropna())) if "ci_level" in table.columns else []
        level = "/".join(f"{100 * v:g}%" for v in levels) + " " if levels else ""
        fig.text(
            0.01,
            -0.01,
            f"error bars: {level}percentile-bootstrap confidence interval over test images "
            "(resampled within each group)",
            fontsize=7.5,
            color="#444444",
            va="top",
        )
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_png)
