"""``h2f compare``: several runs (and modes) side by side on one split, ranked, as Markdown and a bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from herbarium2field.errors import H2FError
from herbarium2field.evaluation.evaluate import evaluate_run
from herbarium2field.io import atomic_write_text
from herbarium2field.run.paths import RunPaths
from herbarium2field.viz.compare import comparison_markdown, comparison_table, plot_comparison


def collect_results(runs: list[Path], *, split: str = "test", evaluate_missing: bool = True) -> list[dict[str, Any]]:
    """Every ``eval/<split>-*/metrics.json`` of the runs; a run never evaluated on ``split`` is evaluated."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        evals = RunPaths(run).eval_root
        files = sorted(evals.glob(f"{split}-*/metrics.json"))
        if not files and evaluate_missing:
            evaluate_run(run, split=split)
            files = sorted(evals.glob(f"{split}-*/metrics.json"))
        for f in files:
            m = json.loads(f.read_text())
            if m.get("labelled", True):
                rows.append({"run": run.name, "mode": m.get("mode", f.parent.name), "metrics": m})
    if not rows:
        raise H2FError(f"no labelled {split} evaluations found in {', '.join(str(r) for r in runs)}")
    return rows


def compare(runs: list[Path], out: Path, *, split: str = "test", rank_by: str = "top1_without_pairs"
            ) -> tuple[pd.DataFrame, str, Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison.png`` to ``out``; return table and markdown."""
    rows = collect_results(runs, split=split)
    table = comparison_table(rows, rank_by=rank_by)
    md = comparison_markdown(table)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.md", f"# Comparison on the {split} split (ranked by {rank_by})\n\n{md}\n")
    atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    png = plot_comparison(table, out / "comparison.png", title=f"Runs compared on the {split} split")
    return table, md, png
