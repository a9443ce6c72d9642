"""The prepared GPU check (``make gpu-check``): one run of at most 8 minutes on one GPU that writes
``benchmarks/results/gpu_check.json``:

1. ``loader``: loader images/s (and per core) with every core as a worker: our PIL path on the originals,
   on the prepared cache, the nvJPEG + GPU-augmentation path, and a plain ``ImageFolder`` loader;
2. ``train``: training images/s of our pipeline (Lightning) and of the plain timm loop, bf16 and
   channels_last, eager and ``torch.compile``; GPU utilisation sampled during each;
3. ``ablation``: the ablation's ``gpu_synth20`` benchmark at reduced size (6 epochs, the ArcFace cell),
   through :func:`herbarium2field.experiments.ablation.run_plan` on a temporary plan;
4. ``identify``: identification latency of one photo with the eager model on the GPU and with the ONNX
   export (onnxruntime's providers are recorded: the CPU package runs it on the CPU).

Every part has its own time budget (seconds, :data:`BUDGETS`; a part past it is stopped) and the JSON is
rewritten after each part, so a part that fails or overruns leaves the others' results and its error.

Without a GPU it says so, runs every part at tiny size on the CPU (a dry run of the same code) and
exits 0, writing ``"gpu": null`` and the reason (to ``benchmarks/results/gpu_check_dry_run.json``
unless ``--out`` is given, so that a dry run never overwrites a GPU result).

    .venv/bin/python benchmarks/gpu_check.py [--out PATH] [--dry-run]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine_info  # noqa: E402
from herbarium2field.io import write_json  # noqa: E402
from herbarium2field.system import load_average, usable_cores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Seconds per part on a GPU (sum 420 s, plus ~40 s of data generation and start-up: under 8 minutes).
BUDGETS = {"loader": 50, "train": 210, "ablation": 120, "identify": 40}
TOTAL_LIMIT_S = 480

#: Sizes of each part: on one GPU, and for the dry run on a CPU.
FULL = {"species": 20, "images": 40, "jpeg": 320, "batch": 128, "input": 224, "loader_batches": 12,
        "steps": 30, "epochs": 6, "variants": ["arcface"], "repeats": 30}
TINY = {"species": 4, "images": 6, "jpeg": 96, "batch": 4, "input": 64, "loader_batches": 2,
        "steps": 2, "epochs": 1, "variants": ["arcface"], "repeats": 3}


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`PartTimeout` in the main thread after ``seconds`` (SIGALRM; no limit where absent)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum, frame):  # type: ignore[no-untyped-def]
        raise PartTimeout(f"stopped at its time budget of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Utilisation:
    """Samples GPU utilisation (%) in a thread: ``torch.cuda.utilization()`` (needs pynvml), else
    ``nvidia-smi``; ``source`` says which, ``reason`` why there is none."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.samples, self.source, self.reason = interval, [], None, None
        self._stop = threading.Event()
        self._probe: Callable[[], float] | None = None
        if not torch.cuda.is_available():
            self.reason = "no CUDA device"
            return
        try:
            torch.cuda.utilization()
            self._probe, self.source = lambda: float(torch.cuda.utilization()), "torch.cuda.utilization (pynvml)"
        except Exception as exc:  # noqa: BLE001 - pynvml missing or NVML unusable: try the CLI
            smi = shutil.which("nvidia-smi")
            if smi:
                self._probe, self.source = lambda: _smi(smi), "nvidia-smi"
            else:
                self.reason = f"no pynvml ({type(exc).__name__}: {exc}) and no nvidia-smi"

    def __enter__(self) -> Utilisation:
        if self._probe is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(self._probe())  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001
                self.reason = f"sampling failed: {exc}"
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {"mean_percent": statistics.mean(s) if s else None, "median_percent": statistics.median(s) if s else None,
                "samples": len(s), "source": self.source, "reason": None if s else (self.reason or "no samples")}


def _smi(smi: str) -> float:
    out = subprocess.run([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, timeout=5, check=True).stdout
    return float(out.strip().splitlines()[0])


# ---- parts ---------------------------------------------------------------------------------------------


def part_loader(ctx: dict[str, Any]) -> dict[str, Any]:
    import timm

    from benchmarks.bench_train import loader_rate, our_datamodule, plain_loader, plain_transform

    a, s = ctx["args"], ctx["size"]
    out: dict[str, Any] = {"workers": a.workers, "batch": a.batch}
    dm, _ = our_datamodule(ctx["data"], a, ctx["gpu"])
    dmc, _ = our_datamodule(ctx["data"], a, ctx["gpu"], cache=True)
    dmg, _ = our_datamodule(ctx["data"], a, ctx["gpu"], cache=True, decode="gpu")
    device = "cuda" if ctx["gpu"] else "cpu"
    model = timm.create_model(a.backbone, num_classes=s["species"])
    loaders = {
        "ours_originals": (dm.train_dataloader(), None),
        "ours_cache": (dmc.train_dataloader(), None),
        "ours_gpu_decode": (dmg.train_dataloader(), lambda b: dmg.decode_encoded(b, device)),
        "plain_imagefolder": (plain_loader(ctx["data"], a, plain_transform(model, a.input_size)), None),
    }
    for name, (loader, decode) in loaders.items():
        ips, first = loader_rate(loader, s["loader_batches"], decode)
        out[name] = {"images_per_s": ips, "images_per_s_per_core": ips / max(a.workers, 1), "first_batch_s": first}
        ctx["save"]()
    plain = out["plain_imagefolder"]["images_per_s"]
    for name in loaders:
        out[name]["over_plain"] = out[name]["images_per_s"] / plain
    return out


def part_train(ctx: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    import timm

    from benchmarks.bench_train import (
        our_datamodule,
        our_training,
        plain_loader,
        plain_training,
        plain_transform,
    )

    a, s, gpu = ctx["args"], ctx["size"], ctx["gpu"]
    for compiled in (False, True):
        key = "compile" if compiled else "eager"
        if compiled and not gpu:
            out[key] = {"skipped": "dry run on a CPU (torch.compile needs minutes and a C++ compiler there)"}
            continue
        row: dict[str, Any] = {}
        out[key] = row
        dm, module = our_datamodule(ctx["data"], a, gpu, cache=True)
        if compiled:
            module.net = torch.compile(module.net)  # type: ignore[assignment]
        with Utilisation() as util:
            row["ours_images_per_s"] = our_training(dm, module, a, gpu)
        row["ours_gpu_utilisation"] = util.summary()
        ctx["save"]()
        model = timm.create_model(a.backbone, num_classes=s["species"])
        if compiled:
            model = torch.compile(model)  # type: ignore[assignment]
        with Utilisation() as util:
            loader = plain_loader(ctx["data"], a, plain_transform(model, a.input_size))
            row["plain_images_per_s"] = plain_training(model, loader, a, gpu)
        row["plain_gpu_utilisation"] = util.summary()
        row["ours_over_plain"] = row["ours_images_per_s"] / row["plain_images_per_s"]
        ctx["save"]()
    return out


def part_ablation(ctx: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    from herbarium2field.experiments.ablation import run_plan
    from herbarium2field.experiments.plan import load_plan

    s, gpu = ctx["size"], ctx["gpu"]
    raw = yaml.safe_load((ROOT / "benchmarks" / "ablation.yaml").read_text())
    bench = dict(raw["benchmarks"]["gpu_synth20"])
    bench["config"] = str((ROOT / "benchmarks" / bench["config"]).resolve())
    bench["variants"] = list(s["variants"])
    extra = [f"train.epochs={s['epochs']}", f"data.num_workers={ctx['args'].workers}"]
    if not gpu:  # the dry run: the same cells, tiny, on the CPU
        bench.pop("requires", None)
        bench["params"] = {**bench["params"], "species": s["species"], "size": s["jpeg"], "test_per_species": 2,
                           "min_images": s["images"], "max_images": s["images"]}
        extra += ["trainer.accelerator=cpu", "trainer.precision=32-true", f"data.image_size={s['input']}",
                  "data.batch_size=8", f"model.backbone={ctx['args'].backbone}"]
    bench["overrides"] = [*bench["overrides"], *extra]
    variants = {k: v for k, v in raw["variants"].items() if k in s["variants"]}
    plan_file = ctx["tmp"] / "gpu_check_plan.yaml"
    plan_file.write_text(yaml.safe_dump({"benchmarks": {"gpu_synth20": bench}, "variants": variants}))
    work = ctx["tmp"] / "ablation"
    out.update({"variants": s["variants"], "extra_overrides": extra, "work": str(work)})
    ctx["work"] = work
    try:
        rows = run_plan(load_plan(plan_file), work, only=["gpu_synth20"], n_boot=200, log=lambda m: print(m, flush=True))
    finally:  # cells finished before a timeout are kept
        out["cells"] = [_cell(json.loads(f.read_text())) for f in sorted((work / "runs" / "gpu_synth20").glob("*.ablation.json"))]
    out["ran"] = len(rows)
    return out


def _cell(row: dict[str, Any]) -> dict[str, Any]:
    g = row["metrics"]["groups"]
    return {"variant": row["variant"], "mode": row["mode"], "train_minutes": row.get("train_minutes"),
            "images_per_s": row.get("images_per_s"),
            "top1": {k: g[k].get("top1") for k in ("overall", "with_pairs", "without_pairs")},
            "top5_overall": g["overall"].get("top5")}


def part_identify(ctx: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    from PIL import Image

    from herbarium2field.data.manifest import read_dataset
    from herbarium2field.identify.export import export_onnx
    from herbarium2field.identify.service import Identifier

    work = ctx.get("work")
    runs = sorted((work / "runs" / "gpu_synth20").glob("*/inference.json")) if work else []
    if not runs:
        raise RuntimeError("no trained run: the ablation part did not finish a cell")
    run = runs[-1].parent
    data = work / "data" / "gpu_synth20"
    photo = Image.open(data / read_dataset(data, check="none").split("test").path.iloc[0]).convert("RGB")
    out["run"] = run.name
    t0 = time.perf_counter()
    rep = export_onnx(run)
    out["onnx_export_s"] = time.perf_counter() - t0
    out["onnx_check"] = {"max_abs_diff_scores": rep.max_abs_diff_scores, "same_top5": rep.same_top5}
    import onnxruntime as ort

    out["onnx_providers_available"] = ort.get_available_providers()
    for backend in ("torch", "onnx"):
        ident = Identifier(run, backend=backend, gallery=False)
        for _ in range(3):
            ident.identify([photo])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times = []
        for _ in range(ctx["size"]["repeats"]):
            t = time.perf_counter()
            ident.identify([photo])
            times.append((time.perf_counter() - t) * 1e3)
        out[backend] = {"median_ms": statistics.median(times), "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
                        "device": str(getattr(ident.model, "device", "cpu")) if backend == "torch" else "onnxruntime"}
        ctx["save"]()
    return out


# ---- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="JSON to write (default: see the module doc)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU even where a GPU is present")
    ap.add_argument("--backbone", default=None,
                    help="default: convnextv2_nano on a GPU, timm's tiny test_convnext in a dry run")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    gpu = torch.cuda.is_available() and not args.dry_run
    reason = None if gpu else ("--dry-run" if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)")
    out_path = args.out or RESULTS / ("gpu_check.json" if gpu else "gpu_check_dry_run.json")
    if not gpu:
        print(f"no GPU: {reason}. Dry run of every part at tiny size on the CPU.", flush=True)
    size = FULL if gpu else TINY
    args.backbone = args.backbone or ("convnextv2_nano" if gpu else "test_convnext")
    cores = usable_cores()
    args.workers = cores if gpu else min(2, cores)
    args.batch, args.steps, args.input_size = size["batch"], size["steps"], size["input"]
    result: dict[str, Any] = {
        "benchmark": "gpu_check",
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "reason": reason,
        "dry_run": not gpu,
        "budgets_s": BUDGETS,
        "sizes": size,
        "backbone": args.backbone,
        "precision": "bf16-mixed + channels_last" if gpu else "fp32 (dry run)",
        "parts": {},
        "load_average_1min": {"before": load_average()},
        "machine": machine_info(),
    }

    def save() -> None:
        result["seconds"] = time.perf_counter() - started
        write_json(out_path, result)

    with tempfile.TemporaryDirectory(prefix="h2f-gpu-check-") as tmp_dir:
        tmp = Path(tmp_dir)
        ctx: dict[str, Any] = {"args": args, "size": size, "gpu": gpu, "tmp": tmp, "save": save}
        t0 = time.perf_counter()
        from herbarium2field.data.cache import prepare_cache
        from herbarium2field.data.manifest import read_dataset
        from herbarium2field.data.synth import generate_dataset

        data = tmp / "data"
        generate_dataset(data, species=size["species"], min_images=size["images"], max_images=size["images"],
                         size=size["jpeg"], seed=0, workers=args.workers if gpu else 1)
        prepare_cache(data, read_dataset(data, check="none").table.path.tolist(), workers=args.workers if gpu else 1,
                      progress=False)
        ctx["data"] = data
        result["setup_s"] = time.perf_counter() - t0
        parts: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "loader": lambda c: part_loader(c),
            "train": lambda c: part_train(c, result["parts"].setdefault("train", {})),
            "ablation": lambda c: part_ablation(c, result["parts"].setdefault("ablation", {})),
            "identify": lambda c: part_identify(c, result["parts"].setdefault("identify", {})),
        }
        for name, fn in parts.items():
            left = TOTAL_LIMIT_S - (time.perf_counter() - started)
            if gpu and left < 20:
                result["parts"][name] = {"skipped": f"only {left:.0f} s left of {TOTAL_LIMIT_S} s"}
                save()
                continue
            budget = min(BUDGETS[name], left) if gpu else 10 * BUDGETS[name]
            print(f"[{name}] budget {budget:.0f} s", flush=True)
            t = time.perf_counter()
            try:
                with time_limit(budget):
                    result["parts"][name] = fn(ctx)
            except Exception as exc:  # noqa: BLE001 - a failed part must not lose the others
                part = result["parts"].setdefault(name, {})
                part["error"] = f"{type(exc).__name__}: {exc}"
                part["traceback"] = traceback.format_exc(limit=8)
                print(f"[{name}] FAILED: {part['error']}", flush=True)
            result["parts"][name]["seconds"] = time.perf_counter() - t
            save()
    result["load_average_1min"]["after"] = load_average()
    save()
    failed = [n for n, p in result["parts"].items() if "error" in p]
    print(f"wrote {out_path} in {result['seconds']:.0f} s" + (f"; failed parts: {', '.join(failed)}" if failed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
