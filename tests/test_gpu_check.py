"""The prepared GPU check on a machine without a GPU: it says so, runs every part at tiny size on the CPU
(a real process, real images, a real training run, ONNX export and identification) and exits 0 with
``"gpu": null`` and the reason in its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: run `make gpu-check` itself")
def test_dry_run_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "H2F_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no GPU" in proc.stdout
    result = json.loads(out.read_text())
    assert result["gpu"] is None and "no CUDA device" in result["reason"] and result["dry_run"] is True
    parts = result["parts"]
    assert set(parts) == {"loader", "train", "ablation", "identify"}
    for name, part in parts.items():
        assert "error" not in part, f"{name}: {part.get('error')}\n{part.get('traceback')}"
    loader = parts["loader"]
    for path in ("ours_originals", "ours_cache", "ours_gpu_decode", "plain_imagefolder"):
        assert loader[path]["images_per_s"] > 0 and loader[path]["images_per_s_per_core"] > 0
    eager = parts["train"]["eager"]
    assert eager["ours_images_per_s"] > 0 and eager["plain_images_per_s"] > 0
    assert eager["ours_gpu_utilisation"]["mean_percent"] is None and eager["ours_gpu_utilisation"]["reason"]
    assert "skipped" in parts["train"]["compile"]
    (cell,) = parts["ablation"]["cells"]
    assert cell["variant"] == "arcface" and 0 <= cell["top1"]["overall"] <= 1
    ident = parts["identify"]
    assert ident["onnx_check"]["same_top5"] and ident["torch"]["median_ms"] > 0 and ident["onnx"]["median_ms"] > 0
    assert not (ROOT / "benchmarks" / "results" / "gpu_check.json").is_file() or json.loads(
        (ROOT / "benchmarks" / "results" / "gpu_check.json").read_text())["gpu"] is not None
