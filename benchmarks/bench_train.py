"""Training throughput: our pipeline (manifest → balanced sampler → per-domain transforms → Lightning) vs a
plain timm + torchvision ``ImageFolder`` loop on the same images, measured side by side in one run.

Also measures loader-only throughput of both, to check that the data loader keeps up with the model
(target: loader ≥ 3× training images/s). Runs on a GPU when present (bf16, channels_last).

    .venv/bin/python benchmarks/bench_train.py [--backbone convnextv2_nano] [--steps 8] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import timm
import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, print_table, write_result  # noqa: E402
from herbarium2field.config import load_config  # noqa: E402
from herbarium2field.data.datamodule import H2FDataModule  # noqa: E402
from herbarium2field.data.manifest import read_dataset  # noqa: E402
from herbarium2field.data.synth import generate_dataset  # noqa: E402
from herbarium2field.models.backbones import preprocessing_for  # noqa: E402
from herbarium2field.models.lightning import H2FLightningModule  # noqa: E402


class StepTimer(L.Callback):
    """Images/s over the steps after ``skip`` warm-up steps."""

    def __init__(self, skip: int) -> None:
        self.skip, self.images, self.t0, self.seconds = skip, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step == self.skip:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step > self.skip:
            self.images += len(batch[0])
            self.seconds = time.perf_counter() - self.t0


def loader_rate(loader: DataLoader, batches: int) -> float:
    it = iter(loader)
    next(it)  # worker start-up
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            x = next(it)[0]
        except StopIteration:
            it = iter(loader)
            x = next(it)[0]
        n += len(x)
    return n / (time.perf_counter() - t0)


def ours(data: Path, args: argparse.Namespace, gpu: bool) -> tuple[float, float]:
    cfg = load_config(
        None,
        [
            f"data.root={data}",
            f"model.backbone={args.backbone}",
            "model.head=arcface",
            f"data.batch_size={args.batch}",
            f"data.num_workers={args.workers}",
            "data.image_size=224",
            "train.warmup_epochs=0",
            "train.epochs=1",
            "data.val_field_fraction=0",
            f"trainer.precision={'bf16-mixed' if gpu else '32-true'}",
            f"trainer.channels_last={str(gpu).lower()}",
            "trainer.deterministic=false",
        ],
    )
    ds = read_dataset(data, check="none")
    dm = H2FDataModule(cfg, ds)
    module = H2FLightningModule(cfg, len(ds.species))
    dm.set_preprocessing(preprocessing_for(module.net.backbone, image_size=224))
    loader_ips = loader_rate(dm.train_dataloader(), args.steps)
    timer = StepTimer(skip=2)
    trainer = L.Trainer(
        max_steps=args.steps + 2,
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision=cfg.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    return timer.images / max(timer.seconds, 1e-9), loader_ips


def plain(data: Path, args: argparse.Namespace, gpu: bool) -> tuple[float, float]:
    """What a user would write by hand: ImageFolder over the herbarium + field folders, full JPEG decode."""
    model = timm.create_model(args.backbone, num_classes=len(list((data / "train" / "herbarium").iterdir())))
    cfg = timm.data.resolve_data_config({}, model=model)
    tf = T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.35, 1.0)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.2, 0.2, 0.2),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    folder = datasets.ImageFolder(str(data / "train" / "herbarium"), transform=tf)
    loader = DataLoader(
        folder,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    loader_ips = loader_rate(loader, args.steps)
    device = torch.device("cuda" if gpu else "cpu")
    model = model.to(device)
    if gpu:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    it, images, t0 = iter(loader), 0, 0.0
    for step in range(args.steps + 2):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        if step == 2:
            t0 = time.perf_counter()
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 2:
            images += len(x)
    if gpu:
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0), loader_ips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="convnextv2_nano")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=320, help="short side of the synthetic JPEGs")
    args = p.parse_args()
    gpu = torch.cuda.is_available()
    if gpu:
        args.batch, args.steps, args.workers = max(args.batch, 128), max(args.steps, 30), 12
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_dataset(
            data, species=20, min_images=40, max_images=40, size=args.size, seed=0, workers=args.workers
        )
        ours_train, ours_loader = ours(data, args, gpu)
        plain_train, plain_loader = plain(data, args, gpu)
    rows = [
        {
            "pipeline": "herbarium2field",
            "train_images_per_s": ours_train,
            "loader_images_per_s": ours_loader,
            "loader_over_train": ours_loader / ours_train,
        },
        {
            "pipeline": "plain timm + ImageFolder",
            "train_images_per_s": plain_train,
            "loader_images_per_s": plain_loader,
            "loader_over_train": plain_loader / plain_train,
        },
    ]
    result = {
        "benchmark": "train_throughput",
        "backbone": args.backbone,
        "input_size": 224,
        "batch": args.batch,
        "steps_timed": args.steps,
        "loader_workers": args.workers,
        "device": "cuda" if gpu else "cpu",
        "precision": "bf16-mixed + channels_last" if gpu else "fp32",
        "rows": rows,
        "ratios": {
            "ours_over_plain_train": ours_train / plain_train,
            "ours_loader_over_ours_train": ours_loader / ours_train,
        },
        "machine": machine_info(),
    }
    path = write_result(f"train_{'gpu' if gpu else 'cpu'}", result)
    print_table(f"training throughput, {args.backbone} @224, batch {args.batch} ({result['device']})", rows)
    print(
        f"ours/plain training: {result['ratios']['ours_over_plain_train']:.2f}x; "
        f"our loader/our training: {result['ratios']['ours_loader_over_ours_train']:.1f}x (target >= 3x)"
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
