"""Load test of ``h2f serve`` on localhost: N concurrent clients for M seconds, one photo per request.

Usage: ``.venv/bin/python benchmarks/bench_serve_load.py [--run runs/NAME] [--clients 4] [--seconds 20]
[--backends torch,onnx]``

Starts the real server (uvicorn, a child process on a free 127.0.0.1 port) for each backend, waits for
``/healthz``, then runs ``--clients`` threads that each POST a real field photo (the shared sample, else a
synthetic one) to ``/api/identify`` in a loop for ``--seconds`` (bounded by ``--max-requests``). Reports
requests/s, latency p50/p95/max and errors (any non-200 or transport error; must be zero). Without
``--run`` a tiny synthetic run is trained and indexed in a temporary folder first (fast, but its 64 px
MobileNet is far cheaper than a real model: pass a real run for representative numbers).
Traffic goes to 127.0.0.1 only. Writes ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, print_table, write_result  # noqa: E402
from herbarium2field.paths import shared_data_dir  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, backend: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "herbarium2field",
                "serve",
                str(run),
                "--port",
                str(port),
                "--backend",
                backend,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"server did not start:\n{log.read_text()}")


def tiny_run(folder: Path) -> Path:
    """A tiny synthetic run, trained and indexed here (~30 s)."""
    from herbarium2field.config import load_config
    from herbarium2field.data.synth.generate import generate_dataset
    from herbarium2field.identify.commands import index_run
    from herbarium2field.identify.export import export_onnx
    from herbarium2field.training.train import train

    data = folder / "data"
    generate_dataset(
        data, species=6, min_images=8, max_images=16, test_per_species=2, size=72, seed=3, workers=1
    )
    os.environ["H2F_RUNS"] = str(folder / "runs")
    sets = [
        "model.backbone=mobilenetv3_small_050",
        "model.embedding_dim=32",
        "data.image_size=64",
        "data.batch_size=16",
        "data.num_workers=0",
        "data.val_field_fraction=0.3",
        "train.epochs=2",
        "train.warmup_epochs=1",
        "train.early_stopping.patience=null",
        "trainer.accelerator=cpu",
    ]
    paths = train(load_config(None, [f"data.root={data}", "name=load", *sets]), progress=False)
    index_run(paths.root, progress=False, num_workers=0)
    export_onnx(paths.root)
    return paths.root


def photo_bytes() -> tuple[str, bytes]:
    photos = sorted((shared_data_dir() / "aml-sample" / "train" / "photo").rglob("*.jpg"))
    if photos:
        return photos[0].name, photos[0].read_bytes()
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1024, 768), (80, 130, 60)).save(buf, "JPEG", quality=90)
    return "synthetic.jpg", buf.getvalue()


def load(
    url: str, clients: int, seconds: float, max_requests: int, photo: tuple[str, bytes]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    count = [0]

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < stop_at:
                with lock:
                    if count[0] >= max_requests:
                        return
                    count[0] += 1
                t = time.perf_counter()
                try:
                    r = c.post("/api/identify", files=[("files", (photo[0], photo[1], "image/jpeg"))])
                    ok = r.status_code == 200 and len(r.json()["results"]) > 0
                    err = None if ok else f"HTTP {r.status_code}: {r.text[:100]}"
                except httpx.HTTPError as exc:
                    err = f"{type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if err:
                        errors.append(err)

    with httpx.Client(base_url=url, timeout=60) as c:  # warm-up
        for _ in range(3):
            c.post("/api/identify", files=[("files", (photo[0], photo[1], "image/jpeg"))])
    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "max_ms": round(float(ms.max()), 1),
        "errors": len(errors),
        "error_examples": errors[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-requests", type=int, default=5000)
    ap.add_argument("--backends", default="torch,onnx")
    args = ap.parse_args()
    photo = photo_bytes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or tiny_run(Path(tmp))
        from herbarium2field.run.card import read_card

        card = read_card(run)
        for backend in args.backends.split(","):
            proc, url = start_server(run, backend, Path(tmp) / f"{backend}.log")
            try:
                res = load(url, args.clients, args.seconds, args.max_requests, photo)
                alive = httpx.get(url + "/healthz", timeout=5).status_code == 200
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            row = {
                "backend": backend,
                "model": card.model.get("backbone"),
                "input": card.preprocessing["input_size"],
                **res,
                "healthy_after": alive,
            }
            rows.append(row)
            print_table(
                f"{backend}: {args.clients} clients x {args.seconds:g} s",
                [{k: v for k, v in row.items() if k != "error_examples"}],
            )
    write_result(
        "serve_load",
        {
            "machine": machine_info(),
            "run": str(args.run or "tiny synthetic run"),
            "photo": {"name": photo[0], "bytes": len(photo[1])},
            "rows": rows,
        },
    )
    if any(r["errors"] for r in rows):
        raise SystemExit("errors under load: see benchmarks/results/serve_load.json")


if __name__ == "__main__":
    main()
