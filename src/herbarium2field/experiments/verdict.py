"""The ablation's verdict: does the candidate recipe beat each baseline, beyond noise?

Each comparison is made on the same test photos (paired bootstrap of the per-photo top-1 hits, read from the
cells' saved ``predictions.csv``), per species group, and shown beside the top-1 range of the same recipe at
other training seeds, so that a difference can be told from training noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from herbarium2field.experiments.plan import Plan
from herbarium2field.run.paths import RunPaths
from herbarium2field.scoring.metrics import paired_diff

GROUPS = ("overall", "with_pairs", "without_pairs")


def _hits(work: Path, plan: Plan, row: dict[str, Any]) -> pd.DataFrame:
    """Per scored photo of one cell: top-1 and top-5 hits and species group (from the cell's saved evaluation,
    or its pooled leave-species-out answers)."""
    if row.get("hits"):
        h = pd.read_csv(work / row["hits"], dtype={"class_id": str})
        image = h["path"] + "@fold" + h["fold"].astype(str)  # a test photo is scored in two folds, two roles
        return pd.DataFrame({"image": image, "hit": (h["rank"] <= 1).astype(float),
                             "hit5": (h["rank"] <= 5).astype(float), "group": h["group"]}).set_index("image")
    reuse = {v.name: v.reuse for v in plan.variants}
    run = work / "runs" / row["benchmark"] / (reuse.get(row["variant"]) or row["variant"])
    ev = RunPaths(run).eval_dir("test", row["mode"])
    pred = pd.read_csv(ev / "predictions.csv", dtype={"true_class_id": str})
    group = pd.read_csv(ev / "per_class.csv", dtype={"class_id": str}).set_index("class_id")["group"]
    return pd.DataFrame({"image": pred["image"], "hit": pred["correct@1"].astype(float),
                         "hit5": (pred["rank"] <= 5).astype(float),
                         "group": pred["true_class_id"].map(group).str.replace(" ", "_")}).set_index("image")


def verdicts(rows: list[dict[str, Any]], plan: Plan, work: Path, *, n_boot: int = 1000) -> list[dict[str, Any]]:
    """Candidate minus each baseline, per benchmark and group: top-1 difference with a paired 95 % CI,
    and the spread of the repeated (other-seed) runs so a difference can be read against training noise."""
    assert plan.verdict is not None
    v = plan.verdict
    out = []
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        cells = {r["variant"]: r for r in rows if r["benchmark"] == bench}
        if v.candidate not in cells:
            continue
        try:
            cand = _hits(work, plan, cells[v.candidate])
            bases = {b: _hits(work, plan, cells[b]).reindex(cand.index) for b in v.baselines if b in cells}
        except FileNotFoundError:  # a cell measured elsewhere (or by an older version): no per-photo hits here
            continue
        reps = [cells[n]["metrics"]["groups"] for n in v.repeats if n in cells]
        for g in GROUPS:
            mask = cand["group"].eq(g) if g != "overall" else pd.Series(True, index=cand.index)
            if not mask.any():
                continue
            row: dict[str, Any] = {"benchmark": bench, "group": g, "n": int(mask.sum()),
                                   "candidate": cells[v.candidate]["metrics"]["groups"][g]["top1"]}
            row["candidate_top5"] = cells[v.candidate]["metrics"]["groups"][g]["top5"]
            for base, b in bases.items():
                row[base] = paired_diff(b["hit"][mask].to_numpy(), cand["hit"][mask].to_numpy(), n_boot)
                row[f"{base}_top5"] = paired_diff(b["hit5"][mask].to_numpy(), cand["hit5"][mask].to_numpy(), n_boot)
            vals = [r[g]["top1"] for r in reps if r.get(g, {}).get("top1") is not None]
            row["repeat_spread"] = [min(vals), max(vals)] if len(vals) > 1 else None
            out.append(row)
    return out


def _cell(d: dict[str, Any] | None) -> str:
    if not d or d.get("diff") is None:
        return "–"
    return f"{100 * d['diff']:+.1f} [{100 * d['ci'][0]:+.0f}, {100 * d['ci'][1]:+.0f}] {_verdict_word(d)}"


def _verdict_word(d: dict[str, Any]) -> str:
    lo, hi = d["ci"]
    return "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"


def verdict_markdown(rows: list[dict[str, Any]], plan: Plan, work: Path, *, n_boot: int = 1000) -> list[str]:
    assert plan.verdict is not None
    v = plan.verdict
    table = verdicts(rows, plan, work, n_boot=n_boot)
    if not table:
        return []
    head = "| benchmark | group | n | " + " | ".join(f"{v.candidate} − {b} (top-1 / top-5, pp)" for b in v.baselines)
    out = [f"### Does {v.candidate} beat {' and '.join(v.baselines)}?", "",
           "Top-1 and top-5 differences in percentage points on the same photos, each with a paired-bootstrap "
           "95 % interval; *better* / *worse* means the interval excludes zero."
           + (f" Training noise: top-1 range of {', '.join(v.repeats)} (one recipe, other seeds)." if v.repeats
              else ""), "",
           head + (" | noise range |" if v.repeats else " |"),
           "| --- | --- | ---: | " + " | ".join("---" for _ in v.baselines) + (" | --- |" if v.repeats else " |")]
    for r in table:
        cells = []
        for b in v.baselines:
            cells.append(" / ".join(_cell(r.get(key)) for key in (b, f"{b}_top5")))
        noise = (f" | {100 * r['repeat_spread'][0]:.1f}–{100 * r['repeat_spread'][1]:.1f} |"
                 if r["repeat_spread"] else (" | – |" if v.repeats else " |"))
        out.append(f"| {r['benchmark']} | {r['group'].replace('_', ' ')} | {r['n']} | " + " | ".join(cells) + noise)
    return [*out, ""]
