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
