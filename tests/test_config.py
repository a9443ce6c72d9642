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


def _measured_recipe() -> list[str]:
    """The overrides + inference mode of the ablation's "recommended" variant (benchmarks/ablation.yaml)."""
    from herbarium2field.experiments.plan import load_plan

    variants = {v.name: v for v in load_plan(project_root() / "benchmarks" / "ablation.yaml").variants}
    rec = variants["recommended"]
    trained = variants[rec.reuse] if rec.reuse else rec
    mode, _, source = rec.mode.partition("-")
    return [*trained.overrides, f"inference.mode={mode}"] + ([f"inference.prototype_source={source}"] if source else [])


def test_recommended_configs_ship_exactly_the_recipe_the_ablation_measured():
    configs = project_root() / "configs"
    recipe = _measured_recipe()
    measured_cpu = load_config(configs / "lite0_cpu_arcface.yaml", recipe)
    assert _changed(measured_cpu, load_config(configs / "recommended_lite0_cpu.yaml")) <= {"name", "data.root"}
    measured_gpu = load_config(configs / "convnextv2_nano_arcface.yaml", recipe)
    assert _changed(measured_gpu, load_config(configs / "recommended.yaml")) == {"name"}


def test_demo_runs_are_the_recommended_recipe_and_a_plain_softmax_baseline():
    from herbarium2field.experiments.plan import load_plan

    configs = project_root() / "configs"
    rec, arc, soft = (load_config(configs / f"{n}.yaml") for n in ("recommended_lite0_cpu", "demo_arcface",
                                                                    "demo_softmax"))
    size_only = {"name", "data.root", "data.image_size", "data.val_field_fraction", "data.val_herbarium_fraction",
                 "model.embedding_dim", "train.epochs", "train.warmup_epochs", "train.lr_backbone"}
    assert _changed(rec, arc) <= size_only  # the demo shrinks the run, it changes no ingredient
    # Every setting any ablation variant switches is off in the softmax baseline (as in the plain base).
    switched = {o.split("=")[0] for v in load_plan(project_root() / "benchmarks" / "ablation.yaml").variants
                for o in v.overrides if not o.startswith("seed=")} | {"inference.mode"}
    # "off" for the ranking is the classifier: the ablation scores a trained variant in classifier mode unless the
    # variant names another (the config's own default, auto, may switch to prototypes)
    plain = _flat(load_config(configs / "lite0_cpu_arcface.yaml", ["model.head=softmax", "inference.mode=classifier"]))
    assert {k: _flat(soft)[k] for k in switched} == {k: plain[k] for k in switched}
    assert _changed(arc, soft) <= switched | {"name"}
