"""The CPU recipe's promise: ``h2f train configs/recommended_lite0_cpu.yaml --data aml-sample`` in < 20 minutes.

Usage: ``.venv/bin/python -m benchmarks.bench_recommended_cpu [--config configs/recommended_lite0_cpu.yaml]``

Runs the exact command a user types (a subprocess, runs under a temporary ``H2F_RUNS``), times it on the
wall clock, then evaluates the run on the sample's test split with the run's own inference mode so the time
comes with the accuracy it buys. Writes ``benchmarks/results/recommended_lite0_cpu.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, print_table, write_result  # noqa: E402
from herbarium2field.paths import project_root, shared_data_dir  # noqa: E402
from herbarium2field.system import load_average  # noqa: E402

TARGET_MINUTES = 20.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/recommended_lite0_cpu.yaml")
    ap.add_argument("--data", default=None, help="dataset root (default: the shared aml-sample)")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    root = project_root()
    data = Path(args.data) if args.data else shared_data_dir() / "aml-sample"
    h2f = str(Path(sys.executable).with_name("h2f"))
    with tempfile.TemporaryDirectory(prefix="h2f-bench-") as tmp:
        env = {**os.environ, "H2F_RUNS": tmp}
        cmd = [h2f, "train", args.config, "--data", str(data), "--name", "bench"]
        before = machine_info()
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        minutes = (time.perf_counter() - start) / 60
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            return proc.returncode
        from herbarium2field.evaluation.evaluate import evaluate_run

        (res,) = evaluate_run(Path(tmp) / "bench", n_boot=args.n_boot)
    groups = res.metrics["groups"]
    result = {
        "command": " ".join(["h2f", *cmd[1:3], "--data", "<aml-sample>", "--name", "bench"]),
        "config": args.config,
        "wall_minutes": round(minutes, 2),
        "target_minutes": TARGET_MINUTES,
        "within_target": minutes < TARGET_MINUTES,
        "evaluation_mode": res.mode,
        "test": {g: {k: v for k, v in m.items() if k in ("n", "top1", "top5", "mrr", "ci")}
                 for g, m in groups.items()},
        "machine": before,
        "load_average_1min_after": load_average(),
    }
    path = write_result("recommended_lite0_cpu", result)
    print_table("recommended_lite0_cpu on aml-sample", [{
        "wall minutes": result["wall_minutes"], "target": TARGET_MINUTES, "mode": res.mode,
        "top-1 overall": 100 * groups["overall"]["top1"], "top-5 overall": 100 * groups["overall"]["top5"]}])
    print(f"wrote {path}")
    return 0 if result["within_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
