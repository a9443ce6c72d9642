"""``h2f evaluate``: a run's metrics on a split, overall and per species group, in classifier and prototype
modes, with bootstrap confidence intervals, per-class table, confusions, predictions and a Markdown report.

Output: ``runs/<name>/eval/<split>-<mode>[-tta]/`` with ``metrics.json``, ``per_class.csv``,
``predictions.csv``, ``confusions.csv``, ``confusion.png`` and ``report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from herbarium2field.errors import H2FError
from herbarium2field.evaluation import metrics as M
from herbarium2field.evaluation.outputs import SplitOutputs, inference_config, split_outputs
from herbarium2field.evaluation.prototypes import SOURCES, prototype_scores, run_prototypes
from herbarium2field.io import atomic_write_text, write_json

MODES = ("classifier", "prototype", "both")


@dataclass
class EvalResult:
    run: str
    mode: str  # "classifier" or "prototype[-source]"
    split: str
    out_dir: Path
    metrics: dict[str, Any] | None  # None for an unlabelled split (predictions only)

    def as_row(self) -> dict[str, Any]:
        return {"run": self.run, "mode": self.mode, "split": self.split, "metrics": self.metrics}


def mode_scores(outputs: SplitOutputs, mode: str, *, run: Path, data: str | Path | None, source: str = "both",
                field_weight: float = 0.5, allow_missing: bool = False, progress: bool = False,
                num_workers: int = 2) -> np.ndarray:
    """Score matrix for one mode: the head's scores, or cosine similarity to training prototypes."""
    if mode == "classifier":
        return outputs.scores
    if source not in SOURCES:
        raise H2FError(f"unknown prototype source {source!r}; choose from {', '.join(SOURCES)}")
    protos = run_prototypes(run, source=source, field_weight=field_weight, data=data, progress=progress,
                            allow_missing=allow_missing, num_workers=num_workers)
    return prototype_scores(outputs.embeddings, protos)


def evaluate_run(run: str | Path, *, data: str | Path | None = None, split: str = "test", mode: str | None = None,
                 tta: str | None = None, prototype_source: str | None = None, field_weight: float | None = None,
                 n_boot: int = 1000, seed: int = 0, allow_missing: bool = False, progress: bool = False,
                 num_workers: int = 2) -> list[EvalResult]:
    """Evaluate a run directory; one :class:`EvalResult` per mode (two for ``both``).

    ``mode``, ``prototype_source`` and ``field_weight`` default to the run's ``inference:`` config.
    """
    run = Path(run)
    inf = inference_config(run)
    mode = mode or inf.mode
    prototype_source = prototype_source or (inf.prototype_source if inf.mode == "prototype" else "both")
    field_weight = inf.field_weight if field_weight is None else field_weight
    if mode not in MODES:
        raise H2FError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    outputs = split_outputs(run, split, data=data, tta=tta, allow_missing=allow_missing, progress=progress,
                            num_workers=num_workers)
    results = []
    for m in (("classifier", "prototype") if mode == "both" else (mode,)):
        scores = mode_scores(outputs, m, run=run, data=data, source=prototype_source, field_weight=field_weight,
                             allow_missing=allow_missing, progress=progress, num_workers=num_workers)
        name = m if m == "classifier" else f"prototype-{prototype_source}"
        out_dir = run / "eval" / f"{split}-{name}{'-tta-' + tta if tta else ''}"
        results.append(write_evaluation(outputs, scores, out_dir, run_name=run.name, mode=name, n_boot=n_boot,
                                        seed=seed, tta=tta))
    return results


def write_evaluation(outputs: SplitOutputs, scores: np.ndarray, out_dir: Path, *, run_name: str, mode: str,
                     n_boot: int = 1000, seed: int = 0, tta: str | None = None) -> EvalResult:
    """Write every artefact of one evaluation and return its metrics."""
    card = outputs.card
    labels = outputs.labels
    paths = outputs.table.path.tolist()
    out_dir.mkdir(parents=True, exist_ok=True)
    labelled = outputs.table.class_id.notna().to_numpy()
    species = dict(zip(card.class_ids, card.species, strict=True))
    preds = M.predictions_table(scores, labels, paths, card.class_ids, species, k=5)
    atomic_write_text(out_dir / "predictions.csv", preds.to_csv(index=False))
    if not labelled.any():
        note = ("This split has no ground truth (no groundtruth.txt or no labels), so only predictions were "
                "written; no accuracy can be computed.")
        atomic_write_text(out_dir / "report.md", f"# {run_name}: {outputs.split} ({mode})\n\n{note}\n")
        write_json(out_dir / "metrics.json", {"run": run_name, "mode": mode, "split": outputs.split, "labelled": False,
                                             "note": note, "n": len(labels)})
        return EvalResult(run_name, mode, outputs.split, out_dir, None)
    scores, labels, table = scores[labelled], labels[labelled], outputs.table[labelled].reset_index(drop=True)
    with_pairs = outputs.with_pairs[labelled]
    groups = {"with_pairs": with_pairs & (labels >= 0), "without_pairs": ~with_pairs & (labels >= 0)}
    result = M.evaluate(scores, labels, groups, ks=(1, 3, 5, 10), n_boot=n_boot, seed=seed)
    result.update({"run": run_name, "mode": mode, "split": outputs.split, "tta": tta, "labelled": True,
                   "n_unlabelled_skipped": int((~labelled).sum())})
    write_json(out_dir / "metrics.json", result)
    per_class = M.per_class(scores, labels, card.class_ids, species, card.with_pairs)
    atomic_write_text(out_dir / "per_class.csv", per_class.to_csv(index=False))
    confusions = M.top_confusions(scores, labels, card.class_ids, species, n=25)
    atomic_write_text(out_dir / "confusions.csv", confusions.to_csv(index=False))
    from herbarium2field.viz.confusion import plot_confusion

    known = labels >= 0
    top1 = M.topk_order(scores[known], labels[known], 1)[:, 0]  # the metrics' tie rule, not argmax's
    plot_confusion(labels[known], top1, card.class_ids, species, card.with_pairs, out_dir / "confusion.png")
    atomic_write_text(out_dir / "report.md", _report(run_name, mode, outputs.split, result, confusions, len(table)))
    return EvalResult(run_name, mode, outputs.split, out_dir, result)


def _fmt(g: dict[str, Any], key: str) -> str:
    v = g.get(key)
    if v is None:
        return "–"
    ci = (g.get("ci") or {}).get(key)
    return f"{100 * v:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * v:.1f}"


def metrics_markdown(result: dict[str, Any]) -> str:
    """Top-1/top-5/MRR per group with 95 % CIs, as a Markdown table."""
    lines = ["| group | n | top-1 % | top-5 % | MRR % | macro top-1 % |", "| --- | ---: | --- | --- | --- | --- |"]
    for name, g in result["groups"].items():
        lines.append(f"| {M.GROUP_LABELS.get(name, name)} | {g['n']} | {_fmt(g, 'top1')} | {_fmt(g, 'top5')} | "
                     f"{_fmt(g, 'mrr')} | {_fmt(g, 'macro_top1')} |")
    return "\n".join(lines)


def _report(run: str, mode: str, split: str, result: dict[str, Any], confusions, n: int) -> str:  # type: ignore[no-untyped-def]
    boot = result["bootstrap"]
    parts = [
        f"# {run}: {split} split, {mode} mode",
        "",
        f"{n} images, {result['n_classes']} species. Brackets: {int(boot['ci'] * 100)} % percentile bootstrap "
        f"interval ({boot['n_boot']} resamples, seed {boot['seed']}). Ties count against the true class.",
        "",
        metrics_markdown(result),
        "",
        "## Most frequent confusions",
        "",
        confusions.head(15).to_markdown(index=False) if len(confusions) else "none",
        "",
        "![confusion matrix](confusion.png)",
        "",
        "Files: `metrics.json`, `per_class.csv`, `predictions.csv`, `confusions.csv`.",
        "",
    ]
    return "\n".join(parts)
