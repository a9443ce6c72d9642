"""Decode + resize throughput on the real sample: full decode vs JPEG draft mode vs the prepared cache.

Usage: ``.venv/bin/python benchmarks/bench_decode.py [--repeat N] [--sizes 256,320]``

For each short side, measured side by side in one run (one process, files already in the page cache,
methods interleaved within each repeat, median of the repeats reported), separately for herbarium sheets
and field photos:

a. ``full``  - full-size decode, then resize (what a naive loader does);
b. ``draft`` - ``load_rgb(path, min_side=size)``: DCT-scaled JPEG decode, then resize;
c. ``cache`` - ``ImageSource.load`` from a cache made by ``prepare_cache`` in a temp folder;
d. ``tv full`` - ``torchvision.io.decode_jpeg`` (libjpeg-turbo, no DCT scaling) of the original, then an
   antialiased torch resize (what :mod:`herbarium2field.data.decode` does on a CPU);
e. ``tv cache`` - ``decode_jpeg`` of the cached file (the GPU path's input; nvJPEG on a GPU).

One process, so every figure is images/s per core.

Quality: PSNR of (b) and of (c) against (a) on a few images per set. Writes
``benchmarks/results/decode.json`` (with machine info) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import features
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine_info, print_table  # noqa: E402
from herbarium2field.data.cache import DEFAULT_SIZE, ImageSource, prepare_cache  # noqa: E402
from herbarium2field.data.decode import decode_batch, read_bytes  # noqa: E402
from herbarium2field.data.images import load_rgb, resize_short_side  # noqa: E402
from herbarium2field.io import write_json  # noqa: E402
from herbarium2field.paths import shared_data_dir  # noqa: E402

PSNR_IMAGES = 8  # per set
#: How the printed table shows its columns (the JSON keeps the numbers as measured).
TABLE_FORMATS = {
    "a full": ".0f",
    "b draft": ".0f",
    "c cache": ".0f",
    "d tv full": ".0f",
    "e tv cache": ".0f",
    "b/a": ".2f",
    "c/a": ".2f",
    "PSNR b": ".1f",
    "PSNR c": ".1f",
    "cache KB": "",
}


def image_sets(root: Path) -> dict[str, list[str]]:
    def rel(paths: list[Path]) -> list[str]:
        return sorted(p.relative_to(root).as_posix() for p in paths)

    return {
        "herbarium": rel(list((root / "train" / "herbarium").rglob("*.jpg"))),
        "field": rel(list((root / "train" / "photo").rglob("*.jpg")) + list((root / "test").glob("*.jpg"))),
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _tv_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if min(h, w) <= size:
        return x
    target = (size, max(1, round(w * size / h))) if h <= w else (max(1, round(h * size / w)), size)
    return torch.nn.functional.interpolate(x[None].float(), size=target, mode="bilinear", antialias=True)[0]


def throughput(fn: Callable[[str], object], rels: list[str]) -> float:
    t0 = time.perf_counter()
    for r in rels:
        fn(r)
    return len(rels) / (time.perf_counter() - t0)


def bench_size(
    root: Path, sets: dict[str, list[str]], size: int, repeat: int, tmp: Path
) -> dict[str, object]:
    cache_dir = tmp / f"cache-{size}"
    all_rels = [r for rels in sets.values() for r in rels]
    report = prepare_cache(root, all_rels, size=size, cache_dir=cache_dir, progress=False)
    assert report.ok, report.failed
    source = ImageSource(root, size=size, cache_dir=cache_dir)
    methods: dict[str, Callable[[str], object]] = {
        "full": lambda r: resize_short_side(load_rgb(root / r), size),
        "draft": lambda r: load_rgb(root / r, min_side=size),
        "cache": source.load,
        "tv full": lambda r: _tv_resize(decode_batch([read_bytes(root / r)])[0], size),
        "tv cache": lambda r: decode_batch([read_bytes(source.file_for(r))])[0],
    }
    out: dict[str, object] = {
        "prepare": {
            "images": report.written,
            "seconds": round(report.seconds, 3),
            "images_per_s": round(report.written / report.seconds, 1),
            "workers": "all cores",
        }
    }
    for name, rels in sets.items():
        for fn in methods.values():  # warm-up: page cache, lazy imports
            fn(rels[0])
        runs: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(repeat):
            for m, fn in methods.items():
                runs[m].append(throughput(fn, rels))
        rate = {m: statistics.median(v) for m, v in runs.items()}
        sample = rels[:: max(1, len(rels) // PSNR_IMAGES)][:PSNR_IMAGES]
        quality: dict[str, list[float]] = {"draft": [], "cache": []}
        for r in sample:
            ref = np.asarray(methods["full"](r))
            for m in quality:
                quality[m].append(psnr(np.asarray(methods[m](r)), ref))
        cached_bytes = [(report.cache_dir / r).stat().st_size for r in rels]  # rels end in .jpg
        out[name] = {
            "images": len(rels),
            "images_per_s": {m: round(v, 1) for m, v in rate.items()},
            "runs_images_per_s": {m: [round(x, 1) for x in v] for m, v in runs.items()},
            "ratio_draft_over_full": round(rate["draft"] / rate["full"], 2),
            "ratio_cache_over_full": round(rate["cache"] / rate["full"], 2),
            "psnr_db_vs_full": {
                m: {"mean": round(statistics.mean(v), 1), "min": round(min(v), 1), "images": len(v)}
                for m, v in quality.items()
            },
            "mean_cached_kb": round(statistics.mean(cached_bytes) / 1024, 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per method (median reported)")
    parser.add_argument(
        "--sizes", default=f"256,{DEFAULT_SIZE}", help=f"short sides to test (default 256,{DEFAULT_SIZE})"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "decode.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core: the torch resize must not borrow the other cores
    console = Console()
    if not console.is_terminal:  # keep the table readable in logs
        console = Console(width=140)
    root = shared_data_dir() / "aml-sample"
    if not (root / "train" / "herbarium").is_dir():
        console.print(f"[red]real sample not found at {root}[/red] (set H2F_SHARED_DATA)")
        return 2
    sets = image_sets(root)
    for rels in sets.values():  # read every file once so that all methods start from the page cache
        for r in rels:
            (root / r).read_bytes()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    result: dict[str, object] = {
        "benchmark": "decode",
        "machine": {
            **machine_info(),
            "pillow": PIL.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"),
        },
        "data": str(root),
        "repeat": args.repeat,
        "default_size": DEFAULT_SIZE,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="h2f-bench-") as tmp:
        for size in sizes:
            console.print(f"short side {size} px ...")
            result["sizes"][str(size)] = bench_size(root, sets, size, args.repeat, Path(tmp))  # type: ignore[index]

    rows = []
    for size, per in result["sizes"].items():  # type: ignore[union-attr]
        for name in sets:
            r = per[name]
            ips = r["images_per_s"]
            rows.append(
                {
                    "size": int(size),
                    "set": name,
                    "n": r["images"],
                    "a full": ips["full"],
                    "b draft": ips["draft"],
                    "c cache": ips["cache"],
                    "d tv full": ips["tv full"],
                    "e tv cache": ips["tv cache"],
                    "b/a": r["ratio_draft_over_full"],
                    "c/a": r["ratio_cache_over_full"],
                    "PSNR b": r["psnr_db_vs_full"]["draft"]["mean"],
                    "PSNR c": r["psnr_db_vs_full"]["cache"]["mean"],
                    "cache KB": r["mean_cached_kb"],
                }
            )
    print_table(
        f"Decode + resize, 1 process, images/s (median of {args.repeat})",
        rows,
        formats=TABLE_FORMATS,
        console=console,
    )
    for size, per in result["sizes"].items():  # type: ignore[union-attr]
        p = per["prepare"]
        console.print(
            f"prepare {size}px: {p['images']} images in {p['seconds']} s ({p['images_per_s']} images/s, all cores)"
        )
    m = result["machine"]
    console.print(
        f"{m['cpu']} ({m['usable_cores']} usable cores), Python {m['python']}, Pillow {m['pillow']}"
    )  # type: ignore[index]
    write_json(args.out, result)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
