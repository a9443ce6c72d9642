"""``h2f evaluate``: a run's metrics on a split, overall and per species group, in classifier and prototype
modes, with bootstrap confidence intervals, per-class table, confusions, predictions and a Markdown report.

Output: ``runs/<name>/eval/<split>-<mode>[-tta]/`` with ``metrics.json``, ``per_class.csv``,
``predictions.csv``, ``confusions.csv``, ``confusion.png`` and ``report.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from herbarium2field.config import BranchConfig
from herbarium2field.errors import H2FError
from herbarium2field.evaluation.outputs import SplitOutputs, dataset_for, split_outputs
from herbarium2field.io import atomic_write_text, write_json
from herbarium2field.run.artefacts import Branch, InferenceChoice, ValidationSet, load_class_means
from herbarium2field.run.finalize import compute_branch
from herbarium2field.run.load import RunModel, load_model
from herbarium2field.run.paths import RunPaths
from herbarium2field.scoring import metrics as M
from herbarium2field.scoring.combine import log_probabilities
from herbarium2field.scoring.prototypes import SOURCES, calibrate_shift
from herbarium2field.scoring.taxonomy import Taxonomy
from herbarium2field.viz.confusion import plot_confusion

MODES = ("classifier", "prototype", "both")


@dataclass
class EvalResult:
    run: str
    mode: str  # "classifier" or "prototype-<source>"
    split: str
    out_dir: Path
    metrics: dict[str, Any] | None  # None for an unlabelled split (predictions only)
    choice: str = ""  # how the scores were ranked, for people

    def as_row(self) -> dict[str, Any]:
        return {"run": self.run, "mode": self.mode, "split": self.split, "metrics": self.metrics}


def ranking_choices(model: RunModel, mode: str | None = None, prototype_source: str | None = None,
                    field_weight: float | None = None) -> list[InferenceChoice]:
    """The rankings to evaluate: the run's own choice by default, or the modes asked for.

    ``prototype`` defaults to the run's prototype source when it ranks by prototypes (else ``both``); a
    ``calibrated`` source not chosen at training is calibrated here on the run's validation photos.
    """
    own = model.choice
    assert own is not None
    if mode is None and prototype_source is None and field_weight is None:
        return [own]
    mode = mode or own.mode
    if mode not in MODES:
        raise H2FError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    out = []
    if mode in ("classifier", "both"):
        out.append(InferenceChoice(mode="classifier", label="classifier", scale=own.scale))
    if mode in ("prototype", "both"):
        # the source as declared (calibrated stays calibrated); an `auto` choice is labelled auto-prototype-<source>
        own_source = own.label.removeprefix("auto-").partition("-")[2] if own.mode == "prototype" else None
        source = prototype_source or own_source or "both"
        if source not in SOURCES:
            raise H2FError(f"unknown prototype source {source!r}; choose from {', '.join(SOURCES)}")
        if source == own_source and field_weight is None:
            out.append(own)
        elif source == "calibrated":
            val = ValidationSet.load(model.run, model.card)
            field = val.domains == 1
            ev = calibrate_shift(load_class_means(model.run, model.card), val.embeddings[field], val.labels[field])
            out.append(InferenceChoice(mode="prototype", prototype_source="shifted",
                                       field_weight=float(ev["field_weight"]), shift=float(ev["shift"]),  # type: ignore[arg-type]
                                       scale=own.scale, label="prototype-calibrated", evidence=ev))
        else:
            fw = own.field_weight if field_weight is None else field_weight
            out.append(InferenceChoice(mode="prototype", prototype_source=source, field_weight=fw,
                                       scale=own.scale, label=f"prototype-{source}"))
    return out


def with_extras(choice: InferenceChoice, reserve: int | None, genus_insert: float | None) -> InferenceChoice:
    """A ranking with reserved places and/or genus sharing set (named after them: ``classifier+reserve2``)."""
    if reserve is None and genus_insert is None:
        return choice
    ch = replace(choice)
    label = ch.label
    if genus_insert is not None and genus_insert != ch.genus_insert:
        ch.genus_insert = genus_insert
        label += f"+genus{genus_insert:g}"
    if reserve is not None and reserve != ch.reserve:
        ch.reserve = reserve
        label += f"+reserve{reserve}"
    ch.label = label
    return ch


def evaluate_run(run: str | Path, *, data: str | Path | None = None, split: str = "test", mode: str | None = None,
                 tta: str | None = None, prototype_source: str | None = None, field_weight: float | None = None,
                 reserve: int | None = None, genus_insert: float | None = None,
                 branch: dict[str, Any] | None = None, n_boot: int = 1000, seed: int = 0, allow_missing: bool = False,
                 progress: bool = False, num_workers: int = 2, backend: str = "auto") -> list[EvalResult]:
    """Evaluate a run directory; one :class:`EvalResult` per ranking (two for ``--mode both``).

    By default the run ranks species as it decided at the end of training (``inference.json``). ``reserve`` /
    ``genus_insert`` evaluate the ranking with that many reserved places / that genus margin instead; a run
    whose training did not make sheet views for the branch gets them here (``branch``: their settings), from
    the training images of ``data``.
    """
    model = load_model(run, backend)
    run = model.run
    choices = [with_extras(ch, reserve, genus_insert) for ch in ranking_choices(model, mode, prototype_source,
                                                                                 field_weight)]
    wanted = branch or (model.choice.branch if model.choice is not None else None) or BranchConfig().model_dump()
    if any(ch.reserve for ch in choices) and (model.branch is None or model.branch.settings != wanted):
        found = Branch.load(run, model.card, wanted)
        if found is None:
            ds = dataset_for(model.card, data or model.card.dataset.get("root"), allow_missing=allow_missing)
            train = ds.split("train")
            found = compute_branch(model, ds.root, train[train.domain == "herbarium"], wanted,
                                   num_workers=num_workers, progress=progress)
            found.save(run, model.card)
        model.use_branch(found)
    outputs = split_outputs(model, split, data=data, tta=tta, allow_missing=allow_missing, progress=progress,
                            num_workers=num_workers)
    results = []
    for ch in choices:
        scorer = model.scorer_for(ch)
        scores = scorer(outputs.embeddings, outputs.logits, outputs.table.domain.astype(str).to_numpy())
        bad = np.isnan(scores).any(axis=1)  # unreadable (allow_missing): every species equal, ranked last
        scores[bad] = 0.0
        keys = model.keys(scores, outputs.branch, reserve=ch.reserve) if ch.reserve else None
        if keys is not None:
            keys[bad] = 0.0
        out_dir = RunPaths(run).eval_dir(split, ch.label, tta)
        ranking = {k: v for k, v in asdict(ch).items() if k != "model"}
        res = write_evaluation(outputs, scores, out_dir, run_name=run.name, mode=ch.label, n_boot=n_boot,
                               seed=seed, tta=tta, ranking=ranking, score_kind=scorer.kind, keys=keys)
        res.choice = ch.describe()
        results.append(res)
    return results


def write_evaluation(outputs: SplitOutputs, scores: np.ndarray, out_dir: Path, *, run_name: str, mode: str,
                     n_boot: int = 1000, seed: int = 0, tta: str | None = None,
                     ranking: dict[str, Any] | None = None, score_kind: str = "logits",
                     keys: np.ndarray | None = None) -> EvalResult:
    """Write every artefact of one evaluation and return its metrics. ``keys``: the species ranking when it
    is not the scores' order (reserved places); the genus table always sums the scores' probabilities."""
    probs_scores, scores = scores, (keys if keys is not None else scores)
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
    result["genus"] = genus_metrics(probs_scores[labelled], labels, groups, card.taxonomy(), score_kind,
                                    n_boot=n_boot, seed=seed)
    result.update({"run": run_name, "mode": mode, "split": outputs.split, "tta": tta, "labelled": True,
                   "n_unlabelled_skipped": int((~labelled).sum()), "ranking": ranking})
    write_json(out_dir / "metrics.json", result)
    per_class = M.per_class(scores, labels, card.class_ids, species, card.with_pairs)
    atomic_write_text(out_dir / "per_class.csv", per_class.to_csv(index=False))
    confusions = M.top_confusions(scores, labels, card.class_ids, species, n=25)
    atomic_write_text(out_dir / "confusions.csv", confusions.to_csv(index=False))
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


def genus_metrics(scores: np.ndarray, labels: np.ndarray, groups: dict[str, np.ndarray], taxonomy: Taxonomy,
                  score_kind: str, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Top-1/top-5/MRR of the genus answer (a genus's probability = the sum of its species'), per group."""
    probs = np.exp(log_probabilities(scores, score_kind))
    res = M.evaluate(taxonomy.genus_probabilities(probs), taxonomy.genus_labels(labels), groups, ks=(1, 5),
                     n_boot=n_boot, seed=seed)
    res["n_genera"] = taxonomy.num_genera
    return res


def metrics_markdown(result: dict[str, Any]) -> str:
    """Top-1/top-5/MRR per group with 95 % CIs, as a Markdown table (genus rows too, when measured)."""
    lines = ["| group | n | top-1 % | top-5 % | MRR % | macro top-1 % |", "| --- | ---: | --- | --- | --- | --- |"]
    for name, g in result["groups"].items():
        lines.append(f"| {M.GROUP_LABELS.get(name, name)} | {g['n']} | {_fmt(g, 'top1')} | {_fmt(g, 'top5')} | "
                     f"{_fmt(g, 'mrr')} | {_fmt(g, 'macro_top1')} |")
    for name, g in (result.get("genus") or {}).get("groups", {}).items():
        lines.append(f"| genus, {M.GROUP_LABELS.get(name, name)} | {g['n']} | {_fmt(g, 'top1')} | {_fmt(g, 'top5')} | "
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
