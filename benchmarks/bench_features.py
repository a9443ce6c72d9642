"""Frozen-feature extraction speed: ConvNeXt V2 Nano vs EfficientNet-Lite0 at 224 px, batch 32.

Usage: ``.venv/bin/python benchmarks/bench_features.py [--repeat 5] [--data DIR]``

Measured side by side in one process, on the same images (the real sample in ``../shared/data/aml-sample``,
or a synthetic set when it is absent):

a. ``network``: forward passes only, on batches of 32 preprocessed images already in memory; the models are
   interleaved within each repeat and the median images/s is reported (CPU: fp32; GPU: bf16 autocast +
   channels_last);
b. ``end_to_end``: ``embed_dataset`` over the whole dataset (decode + resize + network + writing the
   cache), from the ``h2f prepare`` image cache (320 px), with 2 loader workers.

Writes ``benchmarks/results/features.json`` (machine and device recorded) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, print_table, write_result  # noqa: E402
from herbarium2field.data.cache import ImageSource, prepare_cache  # noqa: E402
from herbarium2field.data.manifest import read_dataset  # noqa: E402
from herbarium2field.data.transforms import eval_transform  # noqa: E402
from herbarium2field.features.extract import build_extractor, embed_dataset  # noqa: E402
from herbarium2field.models.frozen import ExtractorSpec  # noqa: E402
from herbarium2field.models.weights import OFFLINE_LITE0  # noqa: E402
from herbarium2field.paths import shared_data_dir  # noqa: E402

MODELS = {  # weights do not change speed; lite0 gets its real offline weights, convnext a random init
    "convnextv2_nano": ExtractorSpec(backbone="convnextv2_nano", size=224, random_init=True),  # speed only
    "efficientnet_lite0": ExtractorSpec(backbone="efficientnet_lite0", weights=OFFLINE_LITE0, size=224),
}
BATCH = 32


def machine(device: torch.device) -> dict[str, object]:
    """:func:`machine_info` plus what these timings depend on: torch threads, device, load at the start."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        **machine_info(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "device": device.type,
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
    }


def dataset(arg: str | None, tmp: Path) -> Path:
    if arg:
        return Path(arg)
    sample = shared_data_dir() / "aml-sample"
    if (sample / "list" / "train.txt").is_file():
        return sample
    from herbarium2field.data.synth.generate import generate_dataset

    root = tmp / "synth"
    generate_dataset(root, species=20, min_images=8, max_images=12, test_per_species=2, size=320, seed=0)
    return root


@torch.inference_mode()
def network_speed(data: Path, repeat: int, device: torch.device) -> dict[str, dict[str, object]]:
    ds = read_dataset(data, check="exists")
    source = ImageSource(ds.root, size=320)
    paths = ds.table.path.tolist()[: 2 * BATCH]
    extractors, batches = {}, {}
    for name, spec in MODELS.items():
        ex = build_extractor(spec).extractor  # the extractor `h2f embed` uses: device, bf16 on a GPU
        t = eval_transform(ex.pre)
        x = torch.stack([t(source.load(p)) for p in paths])
        batches[name] = [x[i : i + BATCH] for i in range(0, len(x), BATCH)]
        extractors[name] = ex

    def run(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = 0
        for x in batches[name]:
            extractors[name](x)
            n += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)

    for name in MODELS:  # warm-up (oneDNN / cuDNN kernel selection)
        run(name)
        run(name)
    runs: dict[str, list[float]] = {m: [] for m in MODELS}
    for _ in range(repeat):
        for name in MODELS:
            runs[name].append(run(name))
    return {
        name: {
            "images_per_s": round(statistics.median(v), 1),
            "runs": [round(r, 1) for r in v],
            "precision": "bf16" if device.type == "cuda" else "fp32",
            "batch": BATCH,
            "images": len(paths),
        }
        for name, v in runs.items()
    }


def end_to_end(data: Path, tmp: Path, rounds: int = 2) -> dict[str, dict[str, object]]:
    ds = read_dataset(data, check="exists")
    os.environ["H2F_CACHE"] = str(tmp / "image-cache")
    prepare_cache(
        ds.root,
        ds.table.path.tolist(),
        size=320,
        cache_dir=tmp / "image-cache" / ds.root.resolve().name,
        progress=False,
    )
    runs: dict[str, list[float]] = {m: [] for m in MODELS}
    n = 0
    for _ in range(rounds):  # interleaved, like the network timings
        for name, spec in MODELS.items():
            shutil.rmtree(tmp / f"emb-{name}", ignore_errors=True)
            rep = embed_dataset(data, tmp / f"emb-{name}", spec, batch_size=BATCH, num_workers=2)
            runs[name].append(rep.images_per_s)
            n = rep.embedded
    return {
        name: {
            "images_per_s": round(statistics.median(v), 1),
            "runs": [round(r, 1) for r in v],
            "images": n,
            "workers": 2,
            "batch": BATCH,
            "source": "h2f prepare cache (320 px)",
        }
        for name, v in runs.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", default=None, help="dataset root (default: the real sample)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = dataset(args.data, tmp)
        result = {
            "benchmark": "features",
            "machine": machine(device),
            "data": str(data),
            "input_size": 224,
            "network": network_speed(data, args.repeat, device),
            "end_to_end": end_to_end(data, tmp),
        }
    result["machine"]["load_average_at_end"] = os.getloadavg()
    a, b = (result["network"][m]["images_per_s"] for m in MODELS)
    result["lite0_vs_convnextv2_nano_network_speedup"] = round(b / a, 2)
    path = write_result("features", result)
    print_table(
        f"feature extraction at 224 px, batch {BATCH}, {device.type}"
        + (
            f" ({result['machine']['gpu']})"
            if device.type == "cuda"
            else f" ({result['machine']['cores']} cores)"
        ),
        [
            {
                "backbone": m,
                "network images/s": result["network"][m]["images_per_s"],
                "end-to-end images/s": result["end_to_end"][m]["images_per_s"],
            }
            for m in MODELS
        ],
        formats={"network images/s": ".1f", "end-to-end images/s": ".1f"},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
