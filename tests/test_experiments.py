"""Derived datasets (species moved to without pairs) and the resumable ablation driver."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from herbarium2field.data.derive import drop_field_photos
from herbarium2field.data.manifest import read_dataset
from herbarium2field.errors import H2FError
from herbarium2field.experiments.ablation import run_plan, write_results
from herbarium2field.experiments.plan import load_plan
from herbarium2field.experiments.verdict import verdict_markdown, verdicts
from tests.conftest import TINY


def test_drop_field_photos_moves_species_without_copying(synth_small, tmp_path):
    src = read_dataset(synth_small)
    out = tmp_path / "derived"
    moved = drop_field_photos(synth_small, out, n=2, seed=1)
    assert len(moved) == 2 and set(moved) <= src.with_pairs
    ds = read_dataset(out)
    assert ds.with_pairs == src.with_pairs - set(moved)
    assert ds.errors == [] and not [p for p in ds.problems if p.kind == "pairs-mismatch"]
    assert len(ds.split("test")) == len(src.split("test"))
    assert (out / "train").is_symlink() and not any(p.suffix == ".jpg" for p in out.rglob("*") if not p.is_symlink()
                                                    and "train" not in p.parts and "test" not in p.parts)
    assert drop_field_photos(synth_small, tmp_path / "again", n=2, seed=1) == moved  # seeded
    with pytest.raises(H2FError, match="not species with field photos"):
        drop_field_photos(synth_small, tmp_path / "bad", class_ids=["nope"])


def test_ablation_runs_each_cell_once_and_writes_a_table(synth_small, tmp_path):
    plan = {
        "benchmarks": {"tiny": {"kind": "dataset", "config": "base.yaml", "params": {"root": str(synth_small)},
                                "overrides": TINY},
                       "costly": {"kind": "dataset", "config": "base.yaml", "params": {"root": str(synth_small)},
                                  "overrides": TINY, "variants": ["arcface"]},
                       "on_gpu": {"kind": "dataset", "config": "base.yaml", "params": {"root": str(synth_small)},
                                  "overrides": TINY, "requires": "gpu", "description": "the GPU benchmark"}},
        "variants": {"shifted": {"reuse": "arcface", "mode": "prototype-shifted", "description": "moved protos"},
                     "arcface": {"description": "plain", "overrides": ["model.embedding_dim=16"]}},
        "verdict": {"candidate": "shifted", "baselines": ["arcface"]},
    }
    (tmp_path / "base.yaml").write_text("name: base\n")
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    p = load_plan(tmp_path / "plan.yaml")
    rows = run_plan(p, tmp_path / "work", n_boot=50, log=lambda _: None)
    if not torch.cuda.is_available():  # the GPU benchmark is skipped here, and said to be
        assert [(r["benchmark"], r["mode"]) for r in rows] == [
            ("tiny", "prototype-shifted"), ("tiny", "classifier"), ("costly", "classifier")]  # its one variant
    runs = list((tmp_path / "work" / "runs" / "tiny").glob("*/model_card.json"))
    assert len(runs) == 1  # the evaluation-only variant reused the trained run ...
    assert json.loads(runs[0].read_text())["embedding_dim"] == 16  # ... trained with the reused variant's recipe
    md = write_results(rows, p, tmp_path / "out.md", work=tmp_path / "work", n_boot=50).read_text()
    assert "| shifted | prototype-shifted |" in md and "moved protos" in md
    if not torch.cuda.is_available():
        assert "### on_gpu\n\nthe GPU benchmark\n\n*Not run: needs a GPU.*" in md
    verdict = json.loads((tmp_path / "out_verdict.json").read_text())
    assert [(v["benchmark"], v["group"]) for v in verdict][0] == ("tiny", "overall")  # "costly" has no candidate
    for v in verdict:  # the paired difference is exactly the difference of the two cells' top-1
        cells = {r["variant"]: r["metrics"]["groups"][v["group"]]["top1"] for r in rows if r["benchmark"] == "tiny"}
        assert v["arcface"]["diff"] == pytest.approx(cells["shifted"] - cells["arcface"], abs=1e-4)
    assert "### Does shifted beat arcface?" in md
    stamp = (tmp_path / "work" / "runs" / "tiny" / "arcface.ablation.json").stat().st_mtime_ns
    again = run_plan(p, tmp_path / "work", n_boot=50, log=lambda _: None)
    assert again == json.loads(json.dumps(rows))
    assert (tmp_path / "work" / "runs" / "tiny" / "arcface.ablation.json").stat().st_mtime_ns == stamp


def test_bad_plan(tmp_path: Path):
    (tmp_path / "p.yaml").write_text("benchmarks: {}\n")
    with pytest.raises(H2FError, match="variants"):
        load_plan(tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text("benchmarks: {b: {kind: synth, config: c.yaml, variants: [nope]}}\n"
                                     "variants: {arcface: {}}\n")
    with pytest.raises(H2FError, match="unknown variants: nope"):
        load_plan(tmp_path / "q.yaml")


def test_shipped_plan_resolves_every_cell():
    """Every (benchmark, variant) of benchmarks/ablation.yaml is a valid config: typos fail here, not after hours."""
    from herbarium2field.config import load_config
    from herbarium2field.experiments.ablation import _resolve
    from herbarium2field.paths import project_root

    plan = load_plan(project_root() / "benchmarks" / "ablation.yaml")
    by_name = {v.name: v for v in plan.variants}
    cells = 0
    for b in plan.benchmarks:
        for v in plan.variants:
            if b.variants is not None and v.name not in b.variants:
                continue
            recipe = by_name[v.reuse] if v.reuse else v
            cfg = load_config(_resolve(plan.path.parent, b.config), [*b.overrides, *recipe.overrides])
            assert cfg.model.head in ("arcface", "softmax")
            cells += 1
    assert cells >= 60 and {b.requires for b in plan.benchmarks} == {None, "gpu"}


def write_cell(work: Path, bench: str, variant: str, ranks: np.ndarray, classes: list[str], with_pairs: set[str]) -> None:
    """A cell's saved evaluation as ``h2f evaluate`` writes it (the columns the verdict reads)."""
    ev = work / "runs" / bench / variant / "eval" / "test-classifier"
    ev.mkdir(parents=True)
    pd.DataFrame({"image": [f"test/{i}.jpg" for i in range(len(ranks))], "true_class_id": classes,
                  "correct@1": ranks == 1, "rank": ranks}).to_csv(ev / "predictions.csv", index=False)
    pd.DataFrame({"class_id": sorted(set(classes)),
                  "group": ["with pairs" if c in with_pairs else "without pairs" for c in sorted(set(classes))]}
                 ).to_csv(ev / "per_class.csv", index=False)


def loop_paired(a: np.ndarray, b: np.ndarray, n_boot: int) -> tuple[float, float, float]:
    """Mean of b - a and its paired 95 % percentile interval, by a plain loop on the verdict's generator."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    diffs = [float(np.mean(b[row]) - np.mean(a[row])) for row in idx]
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return round(float(np.mean(b - a)), 4), round(float(lo), 4), round(float(hi), 4)


def test_verdict_interval_and_word_for_known_hits(tmp_path):
    """60 photos: the candidate finds 15 more herbarium-only photos than the baseline and loses 12 of the
    baseline's hits among species with photos: better, worse, and (overall, +3 of 60) no clear difference."""
    n_with, n_without = 40, 20
    classes = [f"w{i % 4}" for i in range(n_with)] + [f"o{i % 2}" for i in range(n_without)]
    with_pairs = {f"w{i}" for i in range(4)}
    base = np.array([1] * 30 + [3] * 10 + [1] * 2 + [3] * 15 + [9] * 3)  # ranks: 30/40 and 2/20 right at top-1
    cand = base.copy()
    cand[:12] = 4  # 12 of the with-pairs hits lost (still in the top 5)
    cand[n_with + 2:n_with + 17] = 1  # 15 herbarium-only misses found (they were in the top 5 already)
    plan_yaml = {"benchmarks": {"b": {"kind": "dataset", "config": "x.yaml"}},
                 "variants": {"cand": {}, "base": {}}, "verdict": {"candidate": "cand", "baselines": ["base"]}}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan_yaml))
    plan = load_plan(tmp_path / "plan.yaml")
    work = tmp_path / "work"
    write_cell(work, "b", "cand", cand, classes, with_pairs)
    write_cell(work, "b", "base", base, classes, with_pairs)
    masks = {"overall": np.ones(60, bool), "with_pairs": np.arange(60) < n_with, "without_pairs": np.arange(60) >= n_with}
    metrics = {g: {"top1": float(np.mean(cand[m] == 1)), "top5": float(np.mean(cand[m] <= 5))} for g, m in masks.items()}
    rows = [{"benchmark": "b", "variant": "cand", "mode": "classifier", "metrics": {"groups": metrics}},
            {"benchmark": "b", "variant": "base", "mode": "classifier", "metrics": {"groups": {}}}]
    table = {v["group"]: v for v in verdicts(rows, plan, work, n_boot=500)}
    assert list(table) == ["overall", "with_pairs", "without_pairs"]
    md = "\n".join(verdict_markdown(rows, plan, work, n_boot=500))
    words = {"overall": "no clear difference", "with_pairs": "worse", "without_pairs": "better"}
    for g, m in masks.items():
        v = table[g]
        assert v["n"] == int(m.sum()) and v["candidate"] == metrics[g]["top1"]
        for key, hit in (("base", lambda r: r == 1), ("base_top5", lambda r: r <= 5)):
            diff, lo, hi = loop_paired(hit(base[m]).astype(float), hit(cand[m]).astype(float), 500)
            assert v[key] == {"diff": diff, "ci": [lo, hi], "n": int(m.sum())}, (g, key)
        assert v["base_top5"]["diff"] == 0.0  # the lost hits stayed in the top 5
        d = v["base"]
        word = "better" if d["ci"][0] > 0 else "worse" if d["ci"][1] < 0 else "no clear difference"
        assert word == words[g]
        cell = f"{100 * d['diff']:+.1f} [{100 * d['ci'][0]:+.0f}, {100 * d['ci'][1]:+.0f}] {word}"
        assert f"| b | {g.replace('_', ' ')} | {int(m.sum())} | {cell} / +0.0 [+0, +0] no clear difference |" in md
    assert table["with_pairs"]["base"]["diff"] == -0.3 and table["without_pairs"]["base"]["diff"] == 0.75
    assert md.startswith("### Does cand beat base?")
