"""Rich rendering of library results for the CLI (kept out of the library so modules stay UI-free)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from herbarium2field.data.manifest import ERROR_KINDS, Dataset
from herbarium2field.data.stats import summary
from herbarium2field.errors import Problem, where
from herbarium2field.scoring.metrics import GROUP_LABELS


def print_dataset_overview(console: Console, ds: Dataset) -> None:
    s = summary(ds)
    table = Table(title=f"{ds.root} ({ds.layout} layout)", show_header=True)
    table.add_column("")
    table.add_column("images", justify="right")
    table.add_row("train: herbarium sheets", f"{s['train_herbarium']:,}")
    table.add_row("train: field photos", f"{s['train_field']:,}")
    table.add_row("test", f"{s['test']:,}" + ("" if s["test_labelled"] == s["test"] else
                                            f" ({s['test_labelled']:,} labelled)"))
    table.add_row("species", f"{s['species']:,}")
    table.add_row("  with pairs (have field photos)", f"{s['with_pairs_classes']:,}")
    table.add_row("  without pairs (herbarium only)", f"{s['without_pairs_classes']:,}")
    console.print(table)


def print_problems(console: Console, problems: list[Problem], *, per_kind: int = 10) -> None:
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_kind[p.kind].append(p)
    for kind, items in sorted(by_kind.items(), key=lambda kv: (kv[0] not in ERROR_KINDS, kv[0])):
        style = "red" if kind in ERROR_KINDS else "yellow"
        label = "error" if kind in ERROR_KINDS else "warning"
        console.print(f"[{style}]{label}: {len(items)} {kind}[/{style}]")
        for p in items[:per_kind]:
            loc = where(p.path, p.line)
            console.print(f"  {loc + ': ' if loc else ''}{p.message}", highlight=False, soft_wrap=True)
        if len(items) > per_kind:
            console.print(f"  ... {len(items) - per_kind} more (use --show or --report)")


def write_problems_csv(problems: list[Problem], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["severity", "kind", "file", "line", "message"])
        for p in problems:
            w.writerow(["error" if p.kind in ERROR_KINDS else "warning", p.kind, p.path or "", p.line or "", p.message])


def print_stats(console: Console, ds: Dataset) -> None:
    print_dataset_overview(console, ds)
    imb = summary(ds)["imbalance"]
    t = Table(title="class imbalance (training images per species)")
    for col in ("min", "median", "max", "max/min", "Gini", "herbarium per field photo"):
        t.add_column(col, justify="right")
    t.add_row(str(imb["min"]), f"{imb['median']:g}", str(imb["max"]), f"{imb['ratio']:.2f}", f"{imb['gini']:.3f}",
              f"{imb['imbalance_ratio_field']:.2f}")
    console.print(t)


def print_metrics(console: Console, result) -> None:  # type: ignore[no-untyped-def]
    """One evaluation (``EvalResult``) as a table: top-1/top-5/MRR with 95 % CIs per group."""
    if result.metrics is None:
        console.print(f"[yellow]{result.run} ({result.mode}, {result.split}): no labels; predictions only[/yellow]")
        return
    t = Table(title=f"{result.run}: {result.split}, {result.mode}")
    for col in ("group", "images", "top-1 %", "top-5 %", "MRR %"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for name, g in result.metrics["groups"].items():
        t.add_row(GROUP_LABELS.get(name, name), str(g["n"]), *(_pct(g, k) for k in ("top1", "top5", "mrr")))
    for name, g in (result.metrics.get("genus") or {}).get("groups", {}).items():
        t.add_row(f"genus, {GROUP_LABELS.get(name, name)}", str(g["n"]), *(_pct(g, k) for k in ("top1", "top5", "mrr")),
                  style="dim")
    console.print(t)


def _pct(g: dict, key: str) -> str:
    v = g.get(key)
    if v is None:
        return "–"
    ci = (g.get("ci") or {}).get(key)
    return f"{100 * v:.1f} [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]" if ci else f"{100 * v:.1f}"


def print_comparison(console: Console, table) -> None:  # type: ignore[no-untyped-def]
    """The ranked comparison in a terminal-sized table: top-1 / top-5 per species group, in percent."""
    t = Table(title=f"ranked by {table.attrs.get('rank_by', '')}")
    for col in ("rank", "run", "mode"):
        t.add_column(col, justify="right" if col == "rank" else "left", no_wrap=True)
    groups = [g for g in ("overall", "with_pairs", "without_pairs") if f"top1_{g}" in table]
    for g in groups:
        t.add_column(f"top-1 / top-5 %\n{g.replace('_', ' ')}", justify="right")
    for _, r in table.iterrows():
        cells = []
        for g in groups:
            a, b = r.get(f"top1_{g}"), r.get(f"top5_{g}")
            cells.append("–" if a is None or (isinstance(a, float) and math.isnan(a))
                         else f"{100 * a:.1f} / {100 * b:.1f}")
        t.add_row(str(r["rank"]), str(r["run"]), str(r["mode"]), *cells)
    console.print(t)
