"""Training throughput: our pipeline (manifest → balanced sampler → per-domain transforms → Lightning) vs a
plain timm + torchvision loop on the same images, measured side by side in one run.

Loaders (images/s, and per core = per worker process) are measured in interleaved rounds (each round
starting with another pipeline, workers stopped after each measurement), median reported, so that a
change in the machine's load hits every pipeline alike:

- ``herbarium2field``: our training loader as ``h2f train`` builds it (default recipe, PIL path);
- ``herbarium2field, prepared cache``: the same after ``h2f prepare`` (the default input when present);
- ``herbarium2field, GPU decode``: workers read bytes, nvJPEG + GPU augmentation (only with a GPU);
- ``plain loader, our images + recipe`` (the headline baseline): a minimal hand-written Dataset over exactly
  our training images (sheets and photos), PIL's loader and our recipe written with stock torchvision/timm
  ops only (``ToTensor`` + ``Normalize`` where we fuse them), shuffled by a plain DataLoader. Same pixels as
  ours for the same seeds (tests/test_loader.py), so the ratio to it is what our loader adds or saves:
  manifest, balanced sampler, per-item seeding, decode path with its checks, fused ops, collation;
- ``plain ImageFolder``: what a user writes by hand with its own *lighter* recipe (bilinear crop, flip,
  jitter without hue, herbarium sheets only). Reported, but not the same work: our recipe's hue jitter
  alone is about a third of an item's CPU time (see ``per_item_ms`` and docs/performance.md).

``per_item_ms`` is the same comparison without worker processes: one process, one torch thread (as in a
worker), item by item with the three pipelines interleaved, timed in this thread's CPU time (waiting for a
core on a busy machine does not count); each item runs ``--profile-repeats`` times with the same seed and
its fastest run is kept. It gives the CPU ms per image of each step (decode, each transform) and of the
whole item: per core, and robust to the load of a busy machine.

Then training images/s of ours (Lightning) and the plain loop, in ``--train-rounds`` interleaved runs each
(median reported; each run times ``--steps`` steps after 2 warm-up steps). Runs on a GPU when present (bf16,
channels_last, all cores as workers). Records the load average before and after.

    .venv/bin/python benchmarks/bench_train.py [--backbone convnextv2_nano] [--steps 8] [--batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import timm
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision import transforms as T
from torchvision.datasets.folder import pil_loader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, print_table, write_result  # noqa: E402
from herbarium2field.config import load_config  # noqa: E402
from herbarium2field.data.cache import prepare_cache  # noqa: E402
from herbarium2field.data.datamodule import H2FDataModule  # noqa: E402
from herbarium2field.data.datasets import seeded  # noqa: E402
from herbarium2field.data.manifest import read_dataset  # noqa: E402
from herbarium2field.data.synth import generate_dataset  # noqa: E402
from herbarium2field.data.transforms import ColorTwist, ToNormalizedTensor, train_transform  # noqa: E402
from herbarium2field.models.backbones import preprocessing_for  # noqa: E402
from herbarium2field.models.lightning import H2FLightningModule  # noqa: E402
from herbarium2field.system import load_average, usable_cores  # noqa: E402


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


def loader_rate(loader: DataLoader, batches: int, decode=None) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(images/s after the first batch, seconds to the first batch: worker start-up)."""
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    if decode is not None:
        decode(first)
    started = time.perf_counter() - t0
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        x = decode(b)[0] if decode is not None else b[0]
        n += len(x)
    if decode is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
    rate = n / (time.perf_counter() - t0)
    stop_workers(loader)
    return rate, started


def stop_workers(loader: DataLoader) -> None:
    """End a persistent loader's workers: batches they still prefetch would otherwise be decoded while the
    next pipeline is timed, and slow it down."""
    inner = getattr(loader, "_iterator", None)
    if inner is not None and hasattr(inner, "_shutdown_workers"):
        inner._shutdown_workers()
    loader._iterator = None


def our_config(data: Path, args: argparse.Namespace, gpu: bool):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        [
            f"data.root={data}",
            f"model.backbone={args.backbone}",
            "model.head=arcface",
            f"data.batch_size={args.batch}",
            f"data.num_workers={args.workers}",
            f"data.image_size={_input(args)}",
            "train.warmup_epochs=0",
            "train.epochs=1",
            "data.val_field_fraction=0",
            f"trainer.precision={'bf16-mixed' if gpu else '32-true'}",
            f"trainer.channels_last={str(gpu).lower()}",
            "trainer.deterministic=false",
        ],
    )


def our_datamodule(data: Path, args: argparse.Namespace, gpu: bool, *, cache: bool = False,
                   decode: str = "pil") -> tuple[H2FDataModule, H2FLightningModule]:
    cfg = our_config(data, args, gpu)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache": cache})})
    ds = read_dataset(data, check="none")
    dm = H2FDataModule(cfg, ds, decode=decode)
    module = H2FLightningModule(cfg, len(ds.species))
    dm.set_preprocessing(preprocessing_for(module.net.backbone, image_size=_input(args)))
    return dm, module


def our_training(dm: H2FDataModule, module: H2FLightningModule, args: argparse.Namespace, gpu: bool) -> float:
    timer = StepTimer(skip=2)
    trainer = L.Trainer(
        max_steps=args.steps + 2,
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision=dm.cfg.trainer.precision,
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
    return timer.images / max(timer.seconds, 1e-9)


def _input(args: argparse.Namespace) -> int:
    return int(getattr(args, "input_size", 224))


def plain_transform(model: torch.nn.Module, size: int = 224) -> T.Compose:
    cfg = timm.data.resolve_data_config({}, model=model)
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.35, 1.0)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.2, 0.2, 0.2),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
        ]
    )


def plain_loader(data: Path, args: argparse.Namespace, transform) -> DataLoader:  # type: ignore[no-untyped-def]
    """What a user would write by hand: ImageFolder over the herbarium folders, full JPEG decode."""
    folder = datasets.ImageFolder(str(data / "train" / "herbarium"), transform=transform)
    return DataLoader(
        folder,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def stock_transform(ours: T.Compose) -> T.Compose:
    """Our recipe written with stock torchvision/timm ops only, as a user would by hand: ``ToTensor`` +
    ``Normalize`` where we use the fused, bit-identical :class:`ToNormalizedTensor`, torchvision's
    ``ColorJitter`` (+ ``RandomGrayscale``) with the same ranges where we use the one-matrix :class:`ColorTwist`."""
    steps: list[object] = []
    for step in ours.transforms:
        if isinstance(step, ToNormalizedTensor):
            steps += [T.ToTensor(), T.Normalize(step.mean, step.std)]
        elif isinstance(step, ColorTwist):
            steps.append(T.ColorJitter(step.brightness, step.contrast, step.saturation, step.hue))
            if step.grayscale:
                steps.append(T.RandomGrayscale(step.grayscale))
        else:
            steps.append(step)
    return T.Compose(steps)


class PlainTable(Dataset):
    """The hand-written baseline for "same images, same recipe": PIL's loader + a transform per domain."""

    def __init__(self, root: Path, table, transforms: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
        self.items = [(str(root / p), i, str(d)) for i, (p, d) in enumerate(zip(table.path, table.domain, strict=True))]
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        path, label, domain = self.items[i]
        return self.transforms[domain](pil_loader(path)), label  # type: ignore[operator]  (label: the row)


def _op_name(step: object) -> str:
    """A transform step's name, with what makes two steps of one type cost differently."""
    name = type(step).__name__
    if isinstance(step, T.ColorJitter):
        return name + (" (with hue)" if step.hue is not None else " (no hue)")
    interpolation = getattr(step, "interpolation", None)
    if interpolation is not None and "Crop" in name:
        value = interpolation if isinstance(interpolation, str) else getattr(interpolation, "value", interpolation)
        return f"{name} ({value})"
    return name


def per_item_profile(dm: H2FDataModule, data: Path, plain_tf: T.Compose, items: int,
                     repeats: int) -> dict[str, dict[str, object]]:
    """CPU ms per image of every step and of the whole item, for ours, the plain loader with our recipe and
    the plain ImageFolder recipe, all three on the same ``items`` training images (both domains, spread over
    the table; the ImageFolder loader itself reads the sheets only, of about the photos' pixel count).

    In this process, one torch thread (as in a loader worker), item by item with the pipelines interleaved,
    timed in this thread's CPU time: waiting for a core on a busy machine does not count. Each item runs
    ``repeats`` times with the same seed (the same random draws, the same work), each time in another
    pipeline order: the fastest whole item is kept, and the steps of the fastest step-by-step run. Means
    over the items, so the steps add up; ``loader_own_ms`` (item - steps) is what the dataset adds around
    them (seeding, look-ups, the item tuple), within the noise of two separate runs."""
    ours = dm.train_dataset()
    paths = dm.train_table.path.astype(str).tolist()
    stock = {code: stock_transform(tf) for code, tf in ours.transforms.items()}  # type: ignore[arg-type]

    def ours_parts(i: int) -> tuple[object, T.Compose]:
        return dm.source.load(paths[i]), ours.transforms[int(ours.domains[i])]  # type: ignore[return-value]

    def stock_parts(i: int) -> tuple[object, T.Compose]:
        return pil_loader(str(data / paths[i])), stock[int(ours.domains[i])]

    def plain_parts(i: int) -> tuple[object, T.Compose]:
        return pil_loader(str(data / paths[i])), plain_tf

    def whole(name: str, i: int) -> None:
        if name == "herbarium2field":
            ours[(i, i)]  # the dataset's own item: seeding, decode, transforms, the tuple
            return
        img, tf = pipelines[name][0](i)
        with seeded(i):
            tf(img)

    pipelines = {  # name: (decode + the item's transform, what decodes)
        "herbarium2field": (ours_parts, "decode (ImageSource.load)"),
        "plain loader, our images + recipe": (stock_parts, "decode (pil_loader)"),
        "plain ImageFolder": (plain_parts, "decode (pil_loader)"),
    }
    rows = sorted({round(k * (len(ours) - 1) / max(items - 1, 1)) for k in range(min(items, len(ours)))})
    ms: dict[str, dict[str, list[float]]] = {name: {"item": [0.0] * len(rows)} for name in pipelines}
    names = list(pipelines)
    clock = time.thread_time
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for n, i in enumerate(rows):
            best_item = dict.fromkeys(pipelines, float("inf"))
            best_steps: dict[str, dict[str, float]] = {}
            for r in range(repeats):
                for name in names[r % len(names):] + names[:r % len(names)]:  # no pipeline always first
                    parts, decode_name = pipelines[name]
                    t0 = clock()
                    whole(name, i)
                    best_item[name] = min(best_item[name], clock() - t0)
                    t0 = clock()
                    x, tf = parts(i)
                    steps = {decode_name: clock() - t0}
                    with seeded(i):
                        for step in tf.transforms:
                            t0 = clock()
                            x = step(x)
                            steps[_op_name(step)] = clock() - t0
                    if sum(steps.values()) < sum(best_steps.get(name, {"": float("inf")}).values()):
                        best_steps[name] = steps
            for name in pipelines:
                ms[name]["item"][n] = 1000 * best_item[name]
                for op, sec in best_steps[name].items():  # a step the item's domain lacks costs it 0
                    ms[name].setdefault(op, [0.0] * len(rows))[n] = 1000 * sec
    finally:
        torch.set_num_threads(threads)
    out: dict[str, dict[str, object]] = {}
    for name, ops in ms.items():
        mean = {op: statistics.fmean(v) for op, v in ops.items()}
        item = mean.pop("item")
        steps_ms = sum(mean.values())
        out[name] = {"item_ms": item, "images_per_s_per_core": 1000 / item, "steps_ms": mean,
                     "sum_of_steps_ms": steps_ms, "loader_own_ms": item - steps_ms, "items": len(rows),
                     "repeats": repeats, "clock": "thread CPU time"}
    return out


def plain_training(model: torch.nn.Module, loader: DataLoader, args: argparse.Namespace, gpu: bool) -> float:
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
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 2:
            images += len(x)
    if gpu:
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="convnextv2_nano")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per pipeline")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=320, help="short side of the synthetic JPEGs")
    p.add_argument("--loader-batches", type=int, default=20, help="timed batches per loader and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved loader rounds (median reported)")
    p.add_argument("--profile-items", type=int, default=48,
                   help="images in the in-process per-step profile (per_item_ms; 0: skip it)")
    p.add_argument("--profile-repeats", type=int, default=5, help="runs per image in that profile (fastest kept)")
    p.add_argument("--train-rounds", type=int, default=3,
                   help="interleaved training runs per pipeline (median reported)")
    p.add_argument("--no-train", action="store_true", help="loaders only")
    p.add_argument("--name", default=None, help="results file name (default train_cpu / train_gpu)")
    args = p.parse_args()
    gpu = torch.cuda.is_available()
    if gpu:
        args.batch, args.steps, args.workers = max(args.batch, 128), max(args.steps, 30), usable_cores()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_dataset(
            data, species=20, min_images=40, max_images=40, size=args.size, seed=0, workers=args.workers
        )
        ds = read_dataset(data, check="none")
        prepare_cache(data, ds.table.path.tolist(), workers=args.workers, progress=False)
        pipelines: dict[str, tuple[DataLoader, object]] = {}
        dm, module = our_datamodule(data, args, gpu)
        pipelines["herbarium2field"] = (dm.train_dataloader(), None)
        dmc, _ = our_datamodule(data, args, gpu, cache=True)
        pipelines["herbarium2field, prepared cache"] = (dmc.train_dataloader(), None)
        if gpu:
            dmg, _ = our_datamodule(data, args, gpu, cache=True, decode="gpu")
            pipelines["herbarium2field, GPU decode"] = (
                dmg.train_dataloader(), lambda b, d=dmg: d.decode_encoded(b, "cuda"))
        model = timm.create_model(args.backbone, num_classes=len(list((data / "train" / "herbarium").iterdir())))
        pipelines["plain ImageFolder"] = (plain_loader(data, args, plain_transform(model)), None)
        same = PlainTable(data, dm.train_table, {
            "herbarium": stock_transform(train_transform(dm.cfg.data.herbarium_aug, dm.pre, domain="herbarium")),
            "field": stock_transform(train_transform(dm.cfg.data.field_aug, dm.pre, domain="field"))})
        pipelines["plain loader, our images + recipe"] = (DataLoader(
            same, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
            persistent_workers=args.workers > 0, pin_memory=torch.cuda.is_available()), None)
        rates: dict[str, list[float]] = {k: [] for k in pipelines}
        startup: dict[str, float] = {}
        names = list(pipelines)
        for r in range(args.rounds):  # each round starts with another pipeline: no fixed neighbours
            for name in names[r % len(names):] + names[:r % len(names)]:
                loader, decode = pipelines[name]
                rate, started = loader_rate(loader, args.loader_batches, decode)
                rates[name].append(rate)
                if r == 0:
                    startup[name] = started
        loader_ips = {k: statistics.median(v) for k, v in rates.items()}
        del pipelines
        per_item = (per_item_profile(dm, data, plain_transform(model), args.profile_items, args.profile_repeats)
                    if args.profile_items > 0 else {})
        train_ips: dict[str, float] = {}
        train_runs: dict[str, list[float]] = {"herbarium2field": [], "plain ImageFolder": []}
        if not args.no_train:
            plain_train_loader = plain_loader(data, args, plain_transform(model))
            for r in range(args.train_rounds):  # interleaved, each round starting with the other loop
                for name in list(train_runs)[r % 2:] + list(train_runs)[:r % 2]:
                    train_runs[name].append(our_training(dm, module, args, gpu) if name == "herbarium2field"
                                            else plain_training(model, plain_train_loader, args, gpu))
            stop_workers(plain_train_loader)
            train_ips = {k: statistics.median(v) for k, v in train_runs.items()}
    load_after = load_average()
    cores = max(args.workers, 1)
    plain = loader_ips["plain ImageFolder"]
    plain_same = loader_ips["plain loader, our images + recipe"]
    rows = [
        {
            "pipeline": name,
            "loader_images_per_s": ips,
            "loader_images_per_s_per_core": ips / cores,
            "over_plain": ips / plain,
            "over_plain_same_recipe": ips / plain_same,
            "first_batch_s": startup[name],
            "train_images_per_s": train_ips.get(name, float("nan")),
        }
        for name, ips in loader_ips.items()
    ]
    ratios = {  # the headline first: the same recipe; then against plain ImageFolder's lighter recipe
        "ours_over_plain_same_recipe_loader": loader_ips["herbarium2field"] / plain_same,
        "ours_cache_over_plain_same_recipe_loader": loader_ips["herbarium2field, prepared cache"] / plain_same,
        "ours_over_plain_loader": loader_ips["herbarium2field"] / plain,
        "ours_cache_over_plain_loader": loader_ips["herbarium2field, prepared cache"] / plain,
    }
    if per_item:
        ours_ms = per_item["herbarium2field"]["item_ms"]
        ratios["ours_over_plain_same_recipe_per_item"] = per_item["plain loader, our images + recipe"]["item_ms"] / ours_ms  # type: ignore[operator]
        ratios["ours_over_plain_per_item"] = per_item["plain ImageFolder"]["item_ms"] / ours_ms  # type: ignore[operator]
    if train_ips:
        ratios["ours_over_plain_train"] = train_ips["herbarium2field"] / train_ips["plain ImageFolder"]
        ratios["ours_loader_over_ours_train"] = loader_ips["herbarium2field"] / train_ips["herbarium2field"]
    result = {
        "benchmark": "train_throughput",
        "backbone": args.backbone,
        "input_size": 224,
        "image_short_side": args.size,
        "batch": args.batch,
        "steps_timed": args.steps,
        "loader_workers": args.workers,
        "loader_batches_per_round": args.loader_batches,
        "loader_rounds": args.rounds,
        "loader_runs_images_per_s": rates,
        "train_rounds": 0 if args.no_train else args.train_rounds,
        "train_runs_images_per_s": train_runs if train_ips else {},
        "device": "cuda" if gpu else "cpu",
        "precision": "bf16-mixed + channels_last" if gpu else "fp32",
        "rows": rows,
        "headline": "ours_over_plain_same_recipe_loader",
        "ratios": ratios,
        "per_item_ms": per_item,
        "load_average_1min": {"before": load_before, "after": load_after},
        "machine": machine_info(),
    }
    path = write_result(args.name or f"train_{'gpu' if gpu else 'cpu'}", result)
    print_table(
        f"{args.backbone} @224, batch {args.batch}, {args.workers} workers, {args.size} px JPEGs ({result['device']})",
        [{k: v for k, v in row.items()} for row in rows],
        formats={"first_batch_s": ".1f"},
    )
    if per_item:
        ops = list(dict.fromkeys(op for r in per_item.values() for op in r["steps_ms"]))  # type: ignore[attr-defined]
        print_table(
            "CPU ms per image, one process, one thread (fastest of the repeats, mean over the images)",
            [{"step": op, **{name: r["steps_ms"].get(op, 0.0) for name, r in per_item.items()}} for op in ops]  # type: ignore[attr-defined]
            + [{"step": "loader's own (item - steps)", **{n: r["loader_own_ms"] for n, r in per_item.items()}},
               {"step": "item", **{name: r["item_ms"] for name, r in per_item.items()}}],
            formats={name: ".2f" for name in per_item},
        )
    print("; ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()))
    print(f"load average (1 min): {load_before} before, {load_after} after; written to {path}")


if __name__ == "__main__":
    main()
