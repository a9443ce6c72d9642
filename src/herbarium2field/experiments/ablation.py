"""``h2f ablate``: every ingredient on/off, on several benchmarks, as one resumable command.

A plan (YAML, see ``benchmarks/ablation.yaml``) names benchmarks (a synthetic dataset, a dataset on
disk, or a dataset with some species moved to "without pairs") and variants (config overrides plus the
evaluation mode). Each (benchmark, variant) cell trains a run, evaluates it on the test split and records
top-1/top-5 per species group with bootstrap CIs and the training cost. Finished cells are skipped on a
re-run, so an interrupted ablation continues where it stopped.

A costly benchmark may list the variants it runs (``variants:``); one that ``requires: gpu`` is skipped,
and listed as not run, where no GPU is present. An optional ``verdict:`` section names the candidate recipe
and the baselines it must beat (:mod:`herbarium2field.experiments.verdict`).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from herbarium2field.config import ExperimentConfig, load_config
from herbarium2field.data.derive import drop_field_photos
from herbarium2field.data.manifest import read_dataset
from herbarium2field.data.synth import generate_dataset
from herbarium2field.errors import ConfigError
from herbarium2field.evaluation.evaluate import EvalResult, evaluate_run
from herbarium2field.experiments.lso import (
    LsoOutcome,
    excluded_paths,
    fold_hits,
    prepare_folds,
    selection_hits,
)
from herbarium2field.experiments.plan import Benchmark, Plan, Variant
from herbarium2field.experiments.recommend import recommend, recommendation_markdown
from herbarium2field.experiments.verdict import verdict_markdown, verdicts
from herbarium2field.features.recipe import train_frozen
from herbarium2field.io import atomic_write_text, write_json
from herbarium2field.run.card import git_commit
from herbarium2field.run.paths import RunPaths
from herbarium2field.system import load_average
from herbarium2field.training.train import train


def prepare_data(b: Benchmark, work: Path, plan_dir: Path) -> Path:
    """The benchmark's dataset root (generated or derived under ``work/data`` on first use)."""
    if b.kind == "dataset":
        return _resolve(plan_dir, b.params["root"])
    out = work / "data" / b.name
    if (out / "list" / "train.txt").is_file():
        return out
    if b.kind == "synth":
        generate_dataset(out, workers=0, **b.params)
    else:
        p = dict(b.params)
        drop_field_photos(_resolve(plan_dir, p.pop("root")), out, **p)
    return out


def _resolve(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() or q.exists() else (base / q)


def run_cell(b: Benchmark, v: Variant, *, plan_dir: Path, work: Path, n_boot: int = 1000,
             trained_as: Variant | None = None) -> dict[str, Any]:
    """Train (unless done) and evaluate one cell; returns its result row.

    ``trained_as`` is the variant whose run ``v`` reuses (``v.reuse``): its overrides define the training.
    """
    runs = work / "runs" / b.name
    result_file = runs / f"{v.name}.ablation.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    recipe = trained_as or v
    if b.kind == "lso":
        row = _lso_cell(b, v, recipe, plan_dir=plan_dir, work=work, n_boot=n_boot)
    else:
        data = prepare_data(b, work, plan_dir)
        run = runs / (v.reuse or v.name)
        cfg = load_config(_resolve(plan_dir, b.config),
                          [f"data.root={data}", f"name={run.name}", *b.overrides, *recipe.overrides])
        timing = _trained(cfg, run, features=work / "features" / b.name)
        res = _evaluate(run, v, data=None, n_boot=n_boot)
        row = {"benchmark": b.name, "variant": v.name, "mode": res.mode, "train_minutes": timing.get("minutes"),
               "images_per_s": _throughput(run), "load_average_1min": timing.get("load_average_1min"),
               "metrics": res.metrics, "description": v.description}
    row["commit"] = git_commit()
    write_json(result_file, row)
    return row


def _trained(cfg: ExperimentConfig, run: Path, *, features: Path, exclude: set[str] | None = None) -> dict[str, Any]:
    """Train (or fit) the run unless it is finished; its timing record (minutes, load average)."""
    paths = RunPaths(run)
    if not paths.inference.is_file() or not paths.card.is_file():
        start = time.perf_counter()
        if cfg.recipe == "frozen":  # one embedding cache per benchmark and backbone, shared by cells and folds
            key = f"{cfg.model.backbone}-{cfg.data.image_size or 'default'}{'-grey' if cfg.data.grey else ''}"
            train_frozen(cfg, progress=False, runs_root=run.parent, features=features / key, exclude=exclude or ())
            resume = None
        else:
            resume = run if paths.last.is_file() else None
            train(cfg, resume=resume, progress=False, runs_root=run.parent)
        # The load average says whether other jobs shared the CPU (and so inflated the cost columns).
        write_json(paths.train_time, {"minutes": (time.perf_counter() - start) / 60, "resumed": resume is not None,
                                      "load_average_1min": _rounded(load_average())})
    return json.loads(paths.train_time.read_text()) if paths.train_time.is_file() else {}


def _evaluate(run: Path, v: Variant, *, data: Path | None, n_boot: int, split: str = "test") -> EvalResult:
    """Score a cell's run as the variant says: ``classifier``, ``prototype-<source>``, or ``own`` (the ranking
    the run chose at the end of training), with its ``inference`` extras (reserved places, genus sharing)."""
    mode, _, source = v.mode.partition("-")
    extra = v.inference
    own = mode == "own"
    (res,) = evaluate_run(run, data=data, split=split, mode=None if own else mode,
                          prototype_source=None if own else source or "both", n_boot=n_boot,
                          reserve=extra.get("reserve"), genus_insert=extra.get("genus_insert"),
                          branch=extra.get("branch"))
    return res


def _lso_cell(b: Benchmark, v: Variant, recipe: Variant, *, plan_dir: Path, work: Path,
              n_boot: int) -> dict[str, Any]:
    """Every fold of a leave-species-out benchmark: train (or fit) on the fold, score its photos; pooled."""
    root = _resolve(plan_dir, b.params["root"])
    k, seed = int(b.params.get("k", 3)), int(b.params.get("seed", 0))
    ds = read_dataset(root, check="none")
    runs = work / "runs" / b.name
    parts, chosen_on, minutes, loads = [], [], 0.0, []
    for fold, fold_root in prepare_folds(root, work / "data" / b.name, k=k, seed=seed):
        run = runs / f"fold{fold.index}" / (v.reuse or v.name)
        cfg = load_config(_resolve(plan_dir, b.config), [f"name={run.name}", *b.overrides, *recipe.overrides])
        # a network trains on the fold's own dataset; frozen features are embedded once, from the source, and
        # the classifier is fitted without the held-out photos (the same training images either way)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(
            update={"root": str(root if cfg.recipe == "frozen" else fold_root)})})
        timing = _trained(cfg, run, features=work / "features" / b.name, exclude=excluded_paths(ds, fold))
        minutes += timing.get("minutes") or 0.0
        loads.append(timing.get("load_average_1min"))
        res = _evaluate(run, v, data=fold_root, n_boot=0)
        parts.append(fold_hits(fold, res.out_dir))
        val = _evaluate(run, v, data=fold_root, n_boot=0, split="val")
        chosen_on.append(selection_hits(fold, res.out_dir, val.out_dir))
    hits, selection = pd.concat(parts, ignore_index=True), pd.concat(chosen_on, ignore_index=True)
    hits_file = runs / f"{v.name}.lso.csv"
    atomic_write_text(hits_file, hits.to_csv(index=False))
    atomic_write_text(runs / f"{v.name}.lso-selection.csv", selection.to_csv(index=False))
    n = len(ds.class_ids)
    known = [x for x in loads if x is not None]
    return {"benchmark": b.name, "variant": v.name, "mode": res.mode, "train_minutes": round(minutes, 2),
            "trainings": k, "images_per_s": None, "load_average_1min": max(known) if known else None,
            "metrics": LsoOutcome(hits, n, k, minutes).metrics(n_boot=n_boot),
            "selection_metrics": LsoOutcome(selection, n, k, minutes).metrics(n_boot=n_boot),
            "description": v.description, "hits": hits_file.relative_to(work).as_posix(), "commit": git_commit()}


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _throughput(run: Path) -> float | None:
    """Mean training images/s over the fine-tuning epochs (the costly stage)."""
    f = RunPaths(run).metrics
    if not f.is_file():
        return None
    with f.open() as h:
        rows = [r for r in csv.DictReader(h) if r.get("images_per_s")]
    fine = [float(r["images_per_s"]) for r in rows if r.get("stage") == "finetune"] or [
        float(r["images_per_s"]) for r in rows]
    return sum(fine) / len(fine) if fine else None


def run_plan(plan: Plan, work: Path, *, only: list[str] | None = None, n_boot: int = 1000,
             log=print) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Run every cell (``only``: names of benchmarks or variants, or ``bench/variant``)."""
    rows = []
    by_name = {v.name: v for v in plan.variants}
    for v in plan.variants:
        if v.reuse and v.reuse not in by_name:
            raise ConfigError(f"variant {v.name} reuses unknown variant {v.reuse}", path=plan.path)
    for b in plan.benchmarks:
        if b.requires == "gpu" and not _has_gpu():
            if not only or b.name in only:
                log(f"[{b.name}] skipped: needs a GPU")
            continue
        for v in plan.variants:
            if b.variants is not None and v.name not in b.variants:
                continue
            if only and not ({b.name, v.name, f"{b.name}/{v.name}"} & set(only)):
                continue
            log(f"[{b.name}] {v.name} ...")
            row = run_cell(b, v, plan_dir=plan.path.parent, work=work, n_boot=n_boot,
                           trained_as=by_name.get(v.reuse) if v.reuse else None)
            g = row["metrics"]["groups"]
            log(f"[{b.name}] {v.name}: top-1 overall {_pct(g['overall'], 'top1')}, "
                f"without pairs {_pct(g['without_pairs'], 'top1')}")
            rows.append(row)
    return rows


def _has_gpu() -> bool:
    return torch.cuda.is_available()


def _pct(g: dict[str, Any], key: str, ci: bool = False) -> str:
    v = g.get(key)
    if v is None:
        return "–"
    c = (g.get("ci") or {}).get(key)
    return f"{100 * v:.1f} [{100 * c[0]:.0f}–{100 * c[1]:.0f}]" if ci and c else f"{100 * v:.1f}"


def ablation_markdown(rows: list[dict[str, Any]], plan: Plan, *, work: Path | None = None,
                      n_boot: int = 1000) -> str:
    """One table per benchmark: variants × (top-1, top-5 per group with 95 % CIs, training cost)."""
    out = []
    descr = {v.name: v.description for v in plan.variants}
    bench_descr = {b.name: b.description for b in plan.benchmarks}
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        out += [f"### {bench}", ""]
        if bench_descr.get(bench):
            out += [bench_descr[bench], ""]
        g0 = next(r for r in rows if r["benchmark"] == bench)["metrics"]["groups"]
        out += [f"Test photos: {g0['overall']['n']} ({g0['with_pairs']['n']} of species with pairs, "
                f"{g0['without_pairs']['n']} without). Cells: % with 95 % bootstrap interval. Cost: training "
                "minutes and images/s of the fine-tuning epochs; *load*: the 1-minute load average when training "
                "ended (above the core count, other jobs shared the CPU and the cost is inflated; – not recorded).",
                "",
                "| variant | mode | top-1 overall | top-1 with pairs | top-1 without pairs | top-5 overall | "
                "top-5 with pairs | top-5 without pairs | train min | img/s | load |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
        cells = [r for r in rows if r["benchmark"] == bench]
        old = [r for r in cells if work is not None and not _answers_kept(work, plan, r)]
        for r in cells:
            g = r["metrics"]["groups"]
            mins = f"{r['train_minutes']:.1f}" if r.get("train_minutes") is not None else "–"
            ips = f"{r['images_per_s']:.1f}" if r.get("images_per_s") is not None else "–"
            load = f"{r['load_average_1min']:.1f}" if r.get("load_average_1min") is not None else "–"
            out.append(f"| {r['variant']}{' †' if r in old else ''} | {r['mode']} | "
                       f"{_pct(g['overall'], 'top1', True)} | {_pct(g['with_pairs'], 'top1', True)} | "
                       f"{_pct(g['without_pairs'], 'top1', True)} | {_pct(g['overall'], 'top5', True)} | "
                       f"{_pct(g['with_pairs'], 'top5', True)} | {_pct(g['without_pairs'], 'top5', True)} | "
                       f"{mins} | {ips} | {load} |")
        out.append("")
        if old:
            out += ["† measured by an earlier version of the code and not re-run since: its per-photo answers are not "
                    "in the work folder, so it takes no part in a paired verdict.", ""]
        if any("selection_metrics" in r for r in cells):
            out += _selection_table([r for r in cells if "selection_metrics" in r])
    ran = {r["benchmark"] for r in rows}
    for b in plan.benchmarks:
        if b.requires == "gpu" and b.name not in ran:
            out += [f"### {b.name}", "", b.description, "",
                    f"*Not run: needs a GPU.* On a machine with one: `h2f ablate {plan.path.as_posix()} --only {b.name}`.", ""]
    out += ["Variants:", ""] + [f"- **{k}**: {v}" for k, v in descr.items() if v] + [""]
    if plan.verdict and work is not None:
        out += verdict_markdown(rows, plan, work, n_boot=n_boot)
    return "\n".join(out)


def _answers_kept(work: Path, plan: Plan, row: dict[str, Any]) -> bool:
    """Whether the cell's per-photo answers are in ``work`` (needed for paired comparisons)."""
    if row.get("hits"):
        return (work / row["hits"]).is_file()
    reuse = {v.name: v.reuse for v in plan.variants}
    run = work / "runs" / row["benchmark"] / (reuse.get(row["variant"]) or row["variant"])
    return (RunPaths(run).eval_dir("test", row["mode"]) / "predictions.csv").is_file()


def _selection_table(cells: list[dict[str, Any]]) -> list[str]:
    """The leave-species-out selection photos (no test photo): what the recommendation is chosen on."""
    g0 = cells[0]["selection_metrics"]["groups"]
    out = [f"Selection photos (no test photo; the recommended recipe is chosen on these): "
           f"{g0['without_pairs']['n']} training photos of the held-out species, {g0['with_pairs']['n']} "
           "validation photos of the others.", "",
           "| variant | top-1 with pairs | top-1 without pairs | top-5 with pairs | top-5 without pairs |",
           "| --- | --- | --- | --- | --- |"]
    for r in cells:
        g = r["selection_metrics"]["groups"]
        out.append(f"| {r['variant']} | {_pct(g['with_pairs'], 'top1', True)} | "
                   f"{_pct(g['without_pairs'], 'top1', True)} | {_pct(g['with_pairs'], 'top5', True)} | "
                   f"{_pct(g['without_pairs'], 'top5', True)} |")
    return [*out, ""]


def write_results(rows: list[dict[str, Any]], plan: Plan, out: Path, *, work: Path | None = None,
                  n_boot: int = 1000, merge: bool = False) -> Path:
    """Write the table (``out``), its rows (``.json``), the verdicts and the recommendation. With ``merge``,
    cells already in ``out``'s JSON that this run did not measure are kept (an ``--only`` run adds to the
    tables instead of replacing them)."""
    rows = merged(rows, out.with_suffix(".json"), plan) if merge else rows
    write_json(out.with_suffix(".json"), rows)
    if plan.verdict and work is not None:
        write_json(out.with_name(out.stem + "_verdict.json"), verdicts(rows, plan, work, n_boot=n_boot))
    md = ablation_markdown(rows, plan, work=work, n_boot=n_boot)
    if plan.recommend and work is not None:
        rec = recommend(rows, work, benchmark=plan.recommend.benchmark, baselines=plan.recommend.baselines,
                        synthetic=plan.recommend.synthetic, n_boot=n_boot)
        write_json(out.with_name(out.stem + "_recommendation.json"), rec)
        md += "\n" + "\n".join(recommendation_markdown(rec))
    return atomic_write_text(out, md)


def merged(rows: list[dict[str, Any]], previous: Path, plan: Plan) -> list[dict[str, Any]]:
    """``rows`` plus the earlier cells of ``previous`` they do not replace, in the plan's order."""
    old = json.loads(previous.read_text()) if previous.is_file() else []
    cells = {(r["benchmark"], r["variant"]): r for r in old}
    cells.update({(r["benchmark"], r["variant"]): r for r in rows})
    bench = {b.name: i for i, b in enumerate(plan.benchmarks)}
    var = {v.name: i for i, v in enumerate(plan.variants)}
    return sorted(cells.values(), key=lambda r: (bench.get(r["benchmark"], 99), var.get(r["variant"], 999)))
