"""Derived datasets (species moved to without pairs) and the resumable ablation driver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from herbarium2field.data.derive import drop_field_photos
from herbarium2field.data.manifest import read_dataset
from herbarium2field.errors import H2FError
from herbarium2field.experiments.ablation import run_plan, write_results
from herbarium2field.experiments.plan import load_plan
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
