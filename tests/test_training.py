"""Training end to end on real (small) components: run directory, the logged numbers against the model,
determinism, frozen warm-up then fine-tuning, the learning-rate schedule, class-weighted loss, an unreadable
image during training, resume errors, DDP. Exact resume after a kill: test_resume.py."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="module")
def head_runs(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny run per head (2 epochs: 1 frozen warm-up, 1 fine-tuning), shared by the tests below."""
    root = tmp_path_factory.mktemp("head-runs")
    return {head: train(tiny_cfg(synth_small, f"r_{head}", f"model.head={head}"), progress=False,
                        runs_root=root).root for head in ("arcface", "softmax")}


def recompute_validation(run: Path) -> dict[str, float]:
    """The validation numbers of the run's last epoch, computed again from ``last.ckpt`` on the run's own
    validation images (a plain loop: embed, logits, argmax / top-5, per species group)."""
    from herbarium2field.data.datamodule import H2FDataModule
    from herbarium2field.data.manifest import read_dataset
    from herbarium2field.models.backbones import preprocessing_for
    from herbarium2field.models.lightning import H2FLightningModule

    cfg = load_config(run / "config.yaml")
    ds = read_dataset(cfg.data.root, check="exists")
    dm = H2FDataModule(cfg, ds)
    module = H2FLightningModule(cfg, len(ds.species), load_weights=False)
    module.load_state_dict(torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    pre = preprocessing_for(module.net.backbone, weights=cfg.model.weights, image_size=cfg.data.image_size)
    pre.grey = cfg.data.grey
    dm.set_preprocessing(pre)
    logits, labels = [], []
    with torch.no_grad():
        for x, y, _, _ in dm.val_dataloader():
            logits.append(module.net.eval().head.logits(module.net.embed(x)))
            labels.append(y)
    s, y = torch.cat(logits), torch.cat(labels)
    pairs = torch.tensor([c in ds.with_pairs for c in ds.class_ids])[y]
    top1 = s.argmax(1) == y
    top5 = (s.topk(5, dim=1).indices == y[:, None]).any(1)
    out = {"val_top1": top1.float().mean().item(), "val_top5": top5.float().mean().item(),
           "val_loss": torch.nn.functional.cross_entropy(s, y).item()}
    for name, sel in (("with_pairs", pairs), ("without_pairs", ~pairs)):
        out[f"val_top1_{name}"] = top1[sel].float().mean().item() if sel.any() else float("nan")
        out[f"val_top5_{name}"] = top5[sel].float().mean().item() if sel.any() else float("nan")
    return out


@pytest.mark.parametrize("head", ["arcface", "softmax"])
def test_run_directory_is_self_describing(head_runs, head):
    root = head_runs[head]
    for f in ("config.yaml", "environment.json", "model_card.json", "metrics.csv", "checkpoints/best.ckpt",
              "checkpoints/last.ckpt"):
        assert (root / f).is_file(), f
    assert any((root / "tb").iterdir())
    card = ModelCard.load(root / "model_card.json")
    assert card.kind == "network" and len(card.class_ids) == 6 and card.embedding_dim == 32
    assert card.model["head"] == head and card.preprocessing["input_size"] == 64
    rows = read_metrics(root)
    assert [r["stage"] for r in rows] == ["warmup", "finetune"] and [r["epoch"] for r in rows] == ["0", "1"]
    # the logged validation numbers are the model's: recomputed from last.ckpt on the validation images
    want = recompute_validation(root)
    for col, value in want.items():
        assert float(rows[-1][col]) == pytest.approx(value, abs=1e-5, nan_ok=True), col
    assert card.dataset["val_images"] == 11 and card.validation["epochs_run"] == 2
    net, cfg = load_network(root)
    assert cfg.model.head == head and net.head.logits(torch.zeros(1, 32)).shape == (1, len(card.class_ids))
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 6)


def test_same_seed_same_metrics(synth_small, head_runs, runs):
    b = train(tiny_cfg(synth_small, "b", "model.head=arcface"), progress=False)
    cols = ("train_loss", "val_loss", "val_top1", "val_top5")
    a_rows, b_rows = read_metrics(head_runs["arcface"]), read_metrics(b.root)
    assert [[r[c] for c in cols] for r in a_rows] == [[r[c] for c in cols] for r in b_rows]
    assert len(b_rows) == 2 and a_rows[0]["train_loss"] != a_rows[1]["train_loss"]  # it did train


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


#: 3 epochs (1 frozen) of 3 steps each (53 training images, batch 16, last partial batch dropped).
SCHEDULE = ["train.epochs=3", "train.warmup_epochs=1", "train.lr_warmup_head=2e-3", "train.lr_head=1e-3",
            "train.lr_backbone=5e-4", "train.lr_warmup_steps=0.5", "train.min_lr_ratio=0.1"]


@pytest.fixture(scope="module")
def schedule_run(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("schedule")
    weights = _backbone_file(root)
    run = train(tiny_cfg(synth_small, "schedule", *SCHEDULE, f"model.weights={weights}"), progress=False,
                runs_root=root).root
    return run, weights


def test_backbone_learns_after_the_warmup(schedule_run):
    run, weights = schedule_run
    ref = torch.load(weights)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    convs = [k for k, v in ref.items() if k.endswith(".weight") and v.ndim == 4]
    changed = [k for k in convs if not torch.equal(state[f"net.backbone.{k}"], ref[k])]
    assert len(changed) == len(convs)  # every convolution was fine-tuned once unfrozen
    stats = [k for k in ref if k.endswith("running_mean")]
    assert all(not torch.equal(state[f"net.backbone.{k}"], ref[k]) for k in stats)  # BatchNorm back in train mode


def test_lr_columns_are_the_schedule(schedule_run):
    """Each row records the rates the epoch's last optimizer step used (docs/method.md). Warm-up = steps 0..2:
    head at lr_warmup_head, backbone frozen at 0. Fine-tuning = steps 3..8: a linear warm-up over 3 steps
    (1/4, 2/4, 3/4 at steps 3..5), then cosine from 100 % at step 6 to the 10 % floor at step 9."""
    run, _ = schedule_run
    rows = read_metrics(run)
    assert [r["stage"] for r in rows] == ["warmup", "finetune", "finetune"]
    cosine_step_8 = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 3))  # 0.325
    assert [(float(r["lr_head"]), float(r["lr_backbone"])) for r in rows] == [
        pytest.approx((2e-3, 0.0), rel=1e-9, abs=0),  # step 2: warm-up, backbone frozen
        pytest.approx((0.75e-3, 0.75 * 5e-4), rel=1e-9),  # step 5: last step of the linear warm-up
        pytest.approx((cosine_step_8 * 1e-3, cosine_step_8 * 5e-4), rel=1e-9)]  # step 8
    # the optimizer itself has moved on to step 9's rates (the floor), as a resumed run would continue
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    groups = {g["name"]: g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]}
    assert groups == pytest.approx({"backbone": 5e-5, "head": 1e-4}, rel=1e-9)
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 9


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    from herbarium2field.models.lightning import lr_schedule

    f = lr_schedule(total_steps=10, frozen_steps=2, warmup_frac=0.25, min_ratio=0.1)
    # fine-tuning = steps 2..9 (8 steps); warm-up = its first 2 steps: (s + 1) / (warm + 1)
    assert [f(2), f(3)] == pytest.approx([1 / 3, 2 / 3])
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p / 6)) for p in range(7)]
    assert [f(s) for s in range(4, 11)] == pytest.approx(cosine)
    assert f(4) == pytest.approx(1.0) and f(10) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    flat = lr_schedule(total_steps=5, frozen_steps=0, warmup_frac=0.0, min_ratio=1.0)
    assert [flat(s) for s in range(6)] == [1.0] * 6


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
def test_class_weighted_loss_weighs_each_sample_by_its_class_count(strength):
    from herbarium2field.models.lightning import H2FLightningModule

    cfg = load_config(None, ["model.backbone=mobilenetv3_small_050", "model.embedding_dim=8", "model.head=softmax",
                             f"train.class_weighted_loss={strength}"])
    counts = np.array([1, 4, 9, 0])  # a class with no training image counts as 1
    torch.manual_seed(0)
    module = H2FLightningModule(cfg, 4, class_counts=counts, load_weights=False).eval()
    w = np.maximum(counts, 1.0) ** -strength
    assert module.class_weights.numpy() == pytest.approx(w / w.mean())
    x, y, d = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 2, 3, 1]), torch.tensor([0, 1, 0, 1, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer
        loss = module.training_step((x, y, d, torch.arange(6)), 0)
        per = module.net.head.losses(module.net.embed(x), y)
    per_sample = torch.tensor(w / w.mean(), dtype=torch.float32)[y]
    assert loss.item() == pytest.approx(((per * per_sample).sum() / per_sample.sum()).item(), rel=1e-5)
    if strength == 0:
        assert loss.item() == pytest.approx(per.mean().item(), rel=1e-5)
    else:  # the rare class 0 weighs more than the common class 2
        assert module.class_weights[0] > module.class_weights[2] and loss.item() != pytest.approx(per.mean().item())


def test_an_unreadable_training_image_is_replaced_by_another_of_its_class(tmp_path):
    """Training never dies on a bad file: the item comes from the next image of the same class (a warning names
    the file), or of any class when its class has none left; inference never swaps (a flagged blank)."""
    from herbarium2field.data.cache import ImageSource
    from herbarium2field.data.datasets import ImageTableDataset
    from herbarium2field.errors import ImageError
    from tests.conftest import write_jpeg

    colours = {"a0.jpg": (200, 30, 30), "b0.jpg": (30, 30, 200), "a1.jpg": (30, 200, 30), "a2.jpg": (200, 200, 30)}
    for name, colour in colours.items():
        write_jpeg(tmp_path / name, colour, size=(32, 32))
    names, labels = list(colours), [0, 1, 0, 0]

    def dataset(bad: set[str], substitute: bool = True) -> ImageTableDataset:
        for name in bad:
            (tmp_path / name).write_bytes(b"<html>not an image</html>")
        to_tensor = lambda img: torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()  # noqa: E731
        return ImageTableDataset(names, labels, [0, 0, 1, 1], ImageSource(tmp_path, use_cache=False), to_tensor,
                                 substitute=substitute)

    def colour(x: torch.Tensor) -> tuple[int, ...]:
        return tuple(int(round(v)) for v in x.mean(dim=(1, 2)).tolist())

    def near(a: tuple[int, ...], b: tuple[int, int, int]) -> bool:
        return all(abs(x - y) <= 8 for x, y in zip(a, b, strict=True))

    ds = dataset({"a1.jpg"})
    with pytest.warns(UserWarning, match=r"skipping unreadable image: .*a1\.jpg"):
        x, y, d, i = ds[(2, 123)]  # (index, augmentation seed), as the training sampler asks
    assert (y, d, i) == (0, 1, 2) and near(colour(x), colours["a2.jpg"])  # the next sheet of class a
    ds = dataset({"b0.jpg"})  # the only image of class b: the next readable image of any class stands in
    with pytest.warns(UserWarning, match="b0.jpg"):
        x, y, _, _ = ds[1]
    assert y == 1 and near(colour(x), colours["a2.jpg"])  # (a1, next in line, is still unreadable)
    x, y, d, i = dataset(set(), substitute=False)[1]  # inference: flagged, never replaced
    assert i == -2 and y == 1 and float(x.abs().sum()) == 0.0
    with pytest.warns(UserWarning), pytest.raises(ImageError, match="no readable image"):
        dataset(set(colours))[0]


def test_existing_run_is_not_overwritten(synth_small, head_runs):
    runs_root = head_runs["arcface"].parent
    stamp = (head_runs["arcface"] / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    with pytest.raises(H2FError, match="--resume"):
        train(tiny_cfg(synth_small, "r_arcface", "model.head=arcface"), progress=False, runs_root=runs_root)
    assert (head_runs["arcface"] / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp


def _h2f(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "herbarium2field", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_resume_errors(runs, tmp_path):
    with pytest.raises(H2FError, match="not a run directory"):
        train(load_config(None), resume=tmp_path)


def ddp_train(synth_small: Path, runs: Path, tmp_path: Path, *sets: str) -> tuple[str, list[dict[str, str]]]:
    env = {**os.environ, "H2F_RUNS": str(runs), "H2F_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [a for s in [f"data.root={synth_small}", *TINY, "trainer.strategy=ddp", "trainer.devices=2", *sets]
            for a in ("--set", s)]
    proc = _h2f("train", "--name", "ddp", *args, env=env)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out
    assert "MEMBER: 2/2" in out  # Lightning's log line for the second of two processes
    assert (runs / "ddp" / "checkpoints" / "best.ckpt").is_file() and (runs / "ddp" / "prototypes.npz").is_file()
    return out, read_metrics(runs / "ddp")


def test_ddp_on_cpu_with_two_processes(synth_small, runs, tmp_path):
    """Tiny: one fine-tuning epoch of two steps per process (the full-size run is marked slow)."""
    _, rows = ddp_train(synth_small, runs, tmp_path, "train.epochs=1", "train.warmup_epochs=0",
                        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    assert [r["stage"] for r in rows] == ["finetune"] and rows[0]["val_top1"] != ""


@pytest.mark.slow
def test_ddp_warmup_then_finetuning_on_cpu(synth_small, runs, tmp_path):
    _, rows = ddp_train(synth_small, runs, tmp_path)  # TINY: 2 epochs, 1 frozen
    assert [r["stage"] for r in rows] == ["warmup", "finetune"]
    assert all(r["val_top1"] != "" for r in rows)


def train_shipped_config(aml_sample: Path, config: str, *extra: str):  # type: ignore[no-untyped-def]
    """A shipped config on the real PlantCLEF sample, shrunk so it fits a test: the offline EfficientNet-Lite0
    trunk instead of a hub download, 64 px, one epoch."""
    from herbarium2field.paths import project_root

    cfg = load_config(project_root() / "configs" / config, [
        f"data.root={aml_sample}", "name=real", "model.backbone=tf_efficientnet_lite0",
        "model.weights=efficientnet_lite0:offline", "model.pretrained=false", "data.image_size=64",
        "data.num_workers=0", "train.epochs=1", "train.warmup_epochs=0", "trainer.accelerator=cpu", *extra])
    paths = train(cfg, progress=False)
    card = ModelCard.load(paths.card)
    assert len(card.class_ids) == 100 and len(card.with_pairs) == 15
    assert card.model["weights"] == "efficientnet_lite0:offline" and card.model["weights_sha256"]
    rows = read_metrics(paths.root)
    assert card.dataset["val_images"] > 0 and len(rows) == 1 and rows[0]["val_top1"] != ""
    assert (paths.root / "prototypes.npz").is_file() and (paths.root / "calibration.json").is_file()
    return paths


def test_shipped_config_trains_on_real_images_tiny(aml_sample, runs):
    """The real-image path at a tiny size: two training batches (the full epoch of both configs is slow)."""
    train_shipped_config(aml_sample, "convnextv2_nano_arcface.yaml", "trainer.limit_train_batches=2")


@pytest.mark.slow
@pytest.mark.parametrize("config", ["convnextv2_nano_arcface.yaml", "convnextv2_nano_softmax.yaml"])
def test_shipped_configs_train_on_real_images(aml_sample, runs, config):
    train_shipped_config(aml_sample, config)
