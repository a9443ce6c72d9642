"""The written rule that picks the recommended recipe — real photos first, synthetic data as the tie-breaker,
no test photo anywhere:

1. Evidence: the leave-species-out benchmark on real photos, *selection* table — the held-out species'
   training photos (herbarium-only role) and the runs' own validation photos (species with photos); the test
   photos are in the reported table only.
2. A candidate is eligible when, against every baseline, on the same photos (paired bootstrap, 95 %): it is
   not worse overall or on the species with photos, for top-1 or top-5 (the interval's upper end is not below
   zero), and it is better on herbarium-only top-5 (the interval's lower end is above zero).
3. Among the eligible, the highest herbarium-only top-5 wins; a tie goes to the higher mean herbarium-only
   top-5 on the synthetic benchmarks that measured both, then to the cheaper training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from herbarium2field.scoring.metrics import paired_diff

GROUPS = ("overall", "with_pairs", "without_pairs")


def _selection(work: Path, row: dict[str, Any]) -> pd.DataFrame:
    f = work / "runs" / row["benchmark"] / f"{row['variant']}.lso-selection.csv"
    h = pd.read_csv(f, dtype={"class_id": str})
    key = h["path"] + "@fold" + h["fold"].astype(str)
    return pd.DataFrame({"top1": (h["rank"] <= 1).astype(float), "top5": (h["rank"] <= 5).astype(float),
                         "group": h["group"]}).set_index(key)


def recommend(rows: list[dict[str, Any]], work: Path, *, benchmark: str, baselines: list[str],
              synthetic: list[str] | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """Apply the rule above to the cells of ``benchmark``; returns the winner (or None) and every candidate's
    evidence."""
    cells = {r["variant"]: r for r in rows if r["benchmark"] == benchmark and "selection_metrics" in r}
    missing = [b for b in baselines if b not in cells]
    if missing:
        return {"benchmark": benchmark, "recommended": None, "note": f"baselines not measured: {', '.join(missing)}",
                "candidates": []}
    hits = {name: _selection(work, r) for name, r in cells.items()}
    synth = {}
    for r in rows:
        if synthetic and r["benchmark"] in synthetic:
            synth.setdefault(r["variant"], []).append(r["metrics"]["groups"]["without_pairs"]["top5"])
    out = []
    for name, cell in cells.items():
        if name in baselines:
            continue
        cand = hits[name]
        checks, eligible = {}, True
        for base in baselines:
            ref = hits[base].reindex(cand.index)
            for g in GROUPS:
                mask = cand["group"].eq(g) if g != "overall" else pd.Series(True, index=cand.index)
                for k in ("top1", "top5"):
                    d = paired_diff(ref[k][mask].to_numpy(), cand[k][mask].to_numpy(), n_boot)
                    checks[f"{base}/{g}/{k}"] = d
                    if g == "without_pairs" and k == "top5":
                        eligible &= bool(d["ci"] and d["ci"][0] > 0)
                    elif g != "without_pairs":
                        eligible &= bool(d["ci"] is None or d["ci"][1] >= 0)
        sel = cell["selection_metrics"]["groups"]["without_pairs"]
        vals = synth.get(name, [])
        out.append({"variant": name, "eligible": eligible, "selection_without_pairs_top5": sel["top5"],
                    "synthetic_without_pairs_top5": sum(vals) / len(vals) if vals else None,
                    "train_minutes": cell.get("train_minutes"), "checks": checks})
    pool = [c for c in out if c["eligible"]]
    best = max(pool, key=lambda c: (c["selection_without_pairs_top5"], c["synthetic_without_pairs_top5"] or -1.0,
                                    -(c["train_minutes"] or 0.0)), default=None)
    return {"benchmark": benchmark, "baselines": baselines, "recommended": best["variant"] if best else None,
            "candidates": sorted(out, key=lambda c: -c["selection_without_pairs_top5"])}


def recommendation_markdown(result: dict[str, Any]) -> list[str]:
    """The rule's outcome as a table for docs/ablation_results.md."""
    if not result.get("candidates"):
        return [f"### Recommended recipe ({result['benchmark']})", "", result.get("note", "nothing measured"), ""]
    bases = result["baselines"]
    out = [f"### Recommended recipe, by the written rule ({result['benchmark']}, selection photos)", "",
           "Eligible: not worse than any baseline overall or with pairs (top-1, top-5), better than every baseline "
           "on herbarium-only top-5 (paired 95 % intervals on the selection photos: no test photo). The highest "
           "herbarium-only top-5 among the eligible wins.", "",
           "| candidate | eligible | herbarium-only top-5 % (selection) | " + " | ".join(
               f"vs {b}: herbarium-only top-5 (pp)" for b in bases) + " |",
           "| --- | --- | ---: | " + " | ".join("---" for _ in bases) + " |"]
    for c in result["candidates"]:
        cells = []
        for b in bases:
            d = c["checks"][f"{b}/without_pairs/top5"]
            cells.append(f"{100 * d['diff']:+.1f} [{100 * d['ci'][0]:+.0f}, {100 * d['ci'][1]:+.0f}]"
                         if d.get("ci") else "–")
        mark = "**yes**" if c["variant"] == result["recommended"] else ("yes" if c["eligible"] else "no")
        out.append(f"| {c['variant']} | {mark} | {100 * c['selection_without_pairs_top5']:.1f} | "
                   + " | ".join(cells) + " |")
    out += ["", f"Recommended: **{result['recommended'] or 'none eligible'}**.", ""]
    return out
