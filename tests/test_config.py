"""Experiment configs: every shipped file validates, overrides and `base:` inheritance work, errors are located."""

from __future__ import annotations

from pathlib import Path

import pytest

from herbarium2field.config import load_config
from herbarium2field.errors import ConfigError
from herbarium2field.paths import project_root

CONFIGS = sorted((project_root() / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.name and cfg.model.backbone


def test_original_setting_is_what_the_paper_used():
    cfg = load_config(project_root() / "configs" / "convnextv2_nano_arcface.yaml")
    assert cfg.data.image_size == 224 and cfg.model.backbone.startswith("convnextv2_nano")
    assert (cfg.model.arcface.scale, cfg.model.arcface.margin) == (15.0, 0.15)
    t = cfg.train
    assert (t.warmup_epochs, t.lr_warmup_head, t.lr_backbone, t.lr_head, t.early_stopping.patience) == (
        5, 1e-3, 1e-5, 1e-3, 5)
    soft = load_config(project_root() / "configs" / "convnextv2_nano_softmax.yaml")
    assert soft.model.head == "softmax" and soft.train == cfg.train and soft.data == cfg.data


def test_overrides_and_base(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("name: a\ntrain: {epochs: 7, warmup_epochs: 2}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\ntrain: {epochs: 9}\n")
    cfg = load_config(tmp_path / "b.yaml", ["model.arcface.margin=0.3", "data.sampler.field_share=0.5"])
    assert (cfg.name, cfg.train.epochs, cfg.train.warmup_epochs) == ("b", 9, 2)
    assert cfg.model.arcface.margin == 0.3 and cfg.data.sampler.field_share == 0.5


@pytest.mark.parametrize(("text", "sets", "match"), [
    ("train: {epochs: two}\n", [], "train.epochs"),
    ("trian: {epochs: 2}\n", [], "trian"),
    ("train: {epochs: 2, warmup_epochs: 5}\n", [], "warmup_epochs"),
    ("name: [unclosed\n", [], r"c\.yaml:2: not valid YAML"),
    ("name: x\n", ["train.epochs"], "key=value"),
    ("name: x\n", ["model.head=cosface"], "model.head"),
    ("base: c.yaml\n", [], "loop"),
])
def test_bad_configs_are_located(tmp_path: Path, text, sets, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "c.yaml", sets)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def _flat(cfg, prefix: str = "") -> dict:
    tree = cfg.model_dump() if hasattr(cfg, "model_dump") else cfg
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _changed(a, b) -> set[str]:
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def _variant_recipe(name: str) -> list[str]:
    """The overrides, ranking and inference settings of an ablation variant (benchmarks/ablation.yaml), as the
    ablation measured it (a variant that reuses another's run is trained with that variant's overrides)."""
    from herbarium2field.experiments.plan import load_plan

    variants = {v.name: v for v in load_plan(project_root() / "benchmarks" / "ablation.yaml").variants}
    v = variants[name]
    trained = variants[v.reuse] if v.reuse else v
    mode, _, source = v.mode.partition("-")
    return [*trained.overrides, f"inference.mode={mode}",
            *([f"inference.prototype_source={source}"] if source else []),
            *(f"inference.{k}={val}" for k, val in v.inference.items())]


def test_recommended_configs_ship_exactly_the_recipe_the_ablation_measured():
    configs = project_root() / "configs"
    recipe = _variant_recipe("recommended")
    measured_cpu = load_config(configs / "lite0_cpu_arcface.yaml", recipe)
    assert _changed(measured_cpu, load_config(configs / "recommended_lite0_cpu.yaml")) <= {"name", "data.root"}
    measured_gpu = load_config(configs / "convnextv2_nano_arcface.yaml", recipe)
    assert _changed(measured_gpu, load_config(configs / "recommended.yaml")) == {"name"}
    assert measured_cpu.inference.genus_insert is not None or "genus_insert" not in " ".join(recipe)


def test_demo_runs_are_the_ablations_synth20g_cells():
    """make demo trains the softmax, ArcFace and recommended cells of the ablation's synth20g benchmark: the
    same config, benchmark overrides and variant, only the run's name and data folder differ."""
    from herbarium2field.experiments.plan import load_plan

    plan = load_plan(project_root() / "benchmarks" / "ablation.yaml")
    bench = next(b for b in plan.benchmarks if b.name == "synth20g")
    base = (plan.path.parent / bench.config).resolve()
    configs = project_root() / "configs"
    for demo, variant in (("demo_softmax", "softmax"), ("demo_arcface", "arcface"),
                          ("demo_recommended", "recommended")):
        assert variant in bench.variants
        measured = load_config(base, [*bench.overrides, *_variant_recipe(variant)])
        assert _changed(measured, load_config(configs / f"{demo}.yaml")) <= {"name", "data.root"}, demo
    # the ArcFace cell ranks by its classifier (the ablation's default mode), like softmax: a like-for-like pair
    arc, soft = (load_config(configs / f"{n}.yaml") for n in ("demo_arcface", "demo_softmax"))
    assert _changed(arc, soft) == {"name", "model.head"}
