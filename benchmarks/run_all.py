"""``make bench``: every benchmark, one after the other, each writing its JSON to ``benchmarks/results/``.

Each benchmark measures its ratios side by side within its own run (never against numbers from another
machine or another day). ``--quick`` shrinks the slow ones for a smoke run; ``--only`` picks some.

    .venv/bin/python -m benchmarks.run_all [--quick] [--only decode,train]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.common import RESULTS

#: name -> (module, full arguments, quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "decode": ("bench_decode", ["--repeat", "5"], ["--repeat", "1", "--sizes", "320"]),
    "train": ("bench_train", ["--steps", "8"], ["--steps", "2", "--batch", "8", "--loader-batches", "4", "--rounds", "1"]),
    "train_768px": ("bench_train", ["--size", "768", "--no-train", "--name", "train_cpu_768px"],
                    ["--size", "768", "--no-train", "--name", "train_cpu_768px", "--loader-batches", "4", "--rounds", "1"]),
    "features": ("bench_features", [], ["--repeat", "1"]),
    "tsne": ("bench_tsne", [], ["--n", "1000", "--repeat", "1"]),
    "identify": ("bench_identify", [], ["--repeat", "10"]),
    "gallery": ("bench_gallery", ["--uniform"], ["--sizes", "1000,100000"]),
    "serve_load": ("bench_serve_load", [], ["--seconds", "5"]),
    "baseline_aml_sample": ("baseline_aml_sample", [], []),
    "recommended_cpu": ("bench_recommended_cpu", [], ["--n-boot", "200"]),
    "predict": ("bench_predict", ["--n", "5000"], ["--n", "300"]),
    # On a GPU the 8-minute check (gpu_check.json); without one its dry run (gpu_check_dry_run.json).
    "gpu_check": ("gpu_check", [], []),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller settings for a smoke run")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    args = ap.parse_args()
    chosen = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = []
    for name in chosen:
        module, full, quick = BENCHMARKS[name]
        cmd = [sys.executable, "-m", f"benchmarks.{module}", *(quick if args.quick else full)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\nresults in {RESULTS}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
