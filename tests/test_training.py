"""Training end to end on real (small) components: run directory, determinism, frozen warm-up, resume errors,
DDP. Exact resume after a kill: test_resume.py."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from herbarium2field.config import load_config
from herbarium2field.errors import H2FError
from herbarium2field.run.card import ModelCard
from herbarium2field.run.load import load_network
from herbarium2field.training.train import train
from tests.conftest import TINY


def tiny_cfg(root: Path, name: str, *extra: str):
    return load_config(None, [f"data.root={root}", f"name={name}", *TINY, *extra])


def read_metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("H2F_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("H2F_CACHE", str(tmp_path / "cache"))
    return tmp_path / "runs"


@pytest.mark.parametrize("head", ["arcface", "softmax"])
def test_run_directory_is_self_describing(synth_small, runs, head):
    paths = train(tiny_cfg(synth_small, f"r_{head}", f"model.head={head}"), progress=False)
    for f in ("config.yaml", "environment.json", "model_card.json", "metrics.csv", "checkpoints/best.ckpt",
              "checkpoints/last.ckpt"):
        assert (paths.root / f).is_file(), f
    assert any((paths.root / "tb").iterdir())
    card = ModelCard.load(paths.card)
    assert card.kind == "network" and len(card.class_ids) == 6 and card.embedding_dim == 32
    assert card.model["head"] == head and card.preprocessing["input_size"] == 64
    rows = read_metrics(paths.root)
    assert [r["stage"] for r in rows] == ["warmup", "finetune"]
    assert all(float(r["val_top1"]) >= 0 for r in rows) and rows[0]["val_top1_with_pairs"] != ""
    net, cfg = load_network(paths.root)
    assert cfg.model.head == head and net.head.logits(torch.zeros(1, 32)).shape == (1, len(card.class_ids))
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 6)


def test_same_seed_same_metrics(synth_small, runs):
    a = train(tiny_cfg(synth_small, "a"), progress=False)
    b = train(tiny_cfg(synth_small, "b"), progress=False)
    cols = ("train_loss", "val_loss", "val_top1", "val_top5")
    assert [[r[c] for c in cols] for r in read_metrics(a.root)] == [[r[c] for c in cols] for r in read_metrics(b.root)]


def test_warmup_freezes_the_backbone_including_batchnorm(synth_small, runs):
    paths = train(tiny_cfg(synth_small, "frozen", "train.epochs=1", "train.warmup_epochs=1", "model.weights=" +
                           str(_backbone_file(runs.parent))), progress=False)
    ref = torch.load(runs.parent / "backbone.pth")
    state = torch.load(paths.last, weights_only=False)["state_dict"]
    for k, v in ref.items():
        assert torch.equal(state[f"net.backbone.{k}"], v), k  # weights and BN running statistics untouched


def _backbone_file(folder: Path) -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", num_classes=0)
    torch.save(model.state_dict(), folder / "backbone.pth")
    return folder / "backbone.pth"


def test_existing_run_is_not_overwritten(synth_small, runs):
    train(tiny_cfg(synth_small, "once", "train.epochs=1"), progress=False)
    with pytest.raises(H2FError, match="--resume"):
        train(tiny_cfg(synth_small, "once", "train.epochs=1"), progress=False)


def _h2f(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "herbarium2field", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_resume_errors(runs, tmp_path):
    with pytest.raises(H2FError, match="not a run directory"):
        train(load_config(None), resume=tmp_path)


def test_ddp_on_cpu_with_two_processes(synth_small, runs, tmp_path):
    env = {**os.environ, "H2F_RUNS": str(runs), "H2F_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    sets = [a for s in [f"data.root={synth_small}", *TINY, "train.epochs=1", "train.warmup_epochs=0",
                        "trainer.strategy=ddp", "trainer.devices=2"] for a in ("--set", s)]
    proc = _h2f("train", "--name", "ddp", *sets, env=env)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert "MEMBER: 2/2" in out  # Lightning's log line for the second of two processes
    rows = read_metrics(runs / "ddp")
    assert len(rows) == 1 and (runs / "ddp" / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.parametrize("config", ["convnextv2_nano_arcface.yaml", "convnextv2_nano_softmax.yaml"])
def test_shipped_configs_train_on_real_images(aml_sample, runs, config):
    """Both shipped configs, end to end on the real PlantCLEF sample (shrunk so it fits a test: the offline
    EfficientNet-Lite0 trunk instead of a hub download, 64 px, one epoch)."""
    from herbarium2field.paths import project_root

    cfg = load_config(project_root() / "configs" / config, [
        f"data.root={aml_sample}", "name=real", "model.backbone=tf_efficientnet_lite0",
        "model.weights=efficientnet_lite0:offline", "model.pretrained=false", "data.image_size=64",
        "data.num_workers=0", "train.epochs=1", "train.warmup_epochs=0", "trainer.accelerator=cpu"])
    paths = train(cfg, progress=False)
    card = ModelCard.load(paths.card)
    assert len(card.class_ids) == 100 and len(card.with_pairs) == 15
    assert card.dataset["val_images"] > 0 and read_metrics(paths.root)[0]["val_top1"] != ""
