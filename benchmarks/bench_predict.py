"""``h2f predict`` throughput against ``h2f embed`` on the same images: naming a collection should cost little
more than embedding it (the promise: within 10 %).

Usage: ``.venv/bin/python -m benchmarks.bench_predict [--n 5000] [--rounds 1] [--workers 2]``

Builds a frozen EfficientNet-Lite0 run (the CPU recipe, offline ImageNet weights) on a small synthetic dataset,
indexes its herbarium gallery and exports it to ONNX; then writes ``--n`` distinct field-photo JPEGs (crops of
the synthetic photos, 320×240) listed in a dataset CSV that both commands read. Each round times, one after the
other on the same files: ``embed`` (the frozen extractor over every image, no image cache so both decode the
JPEGs), ``predict`` with the PyTorch backend and ``predict`` with ONNX Runtime (top-5 species, genus, 3 best
sheets per photo, written in chunks). The ratio predict/embed is taken within a round, and the machine's load
average is recorded before and after. Writes ``benchmarks/results/predict.json``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, print_table, write_result  # noqa: E402
from herbarium2field.system import load_average  # noqa: E402

TARGET = 1.10  # predict may take at most 10 % longer than embed


def make_photos(source: Path, out: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct JPEGs (random crops, flips and quality of the source photos) and a dataset CSV of them."""
    rng = np.random.default_rng(seed)
    sources = sorted(source.rglob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = Image.open(sources[i % len(sources)]).convert("RGB")
        w, h = img.size
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch)).resize((320, 240))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        name = f"photos/{i // 1000:02d}/{i:05d}.jpg"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(out / name, quality=int(rng.integers(80, 95)))
        rows.append({"path": name, "class_id": "", "domain": "field", "split": "test"})
    manifest = out / "photos.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "class_id", "domain", "split"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def build_run(root: Path) -> Path:
    """A frozen Lite0 + logistic regression run on a small synthetic dataset, indexed and exported to ONNX."""
    from herbarium2field.config import load_config
    from herbarium2field.data.synth.generate import generate_dataset
    from herbarium2field.features.recipe import train_frozen
    from herbarium2field.identify.commands import index_run
    from herbarium2field.identify.export import export_onnx

    data = root / "synth"
    generate_dataset(data, species=6, min_images=10, max_images=20, test_per_species=2, size=320, seed=0, workers=1)
    cfg = load_config(None, [f"data.root={data}", "name=bench_predict", "recipe=frozen", "model.backbone=tf_efficientnet_lite0",
                             "model.weights=efficientnet_lite0:offline", "data.image_size=224", "data.num_workers=2",
                             "frozen.classifier=logreg"])
    run = train_frozen(cfg, progress=False, runs_root=root / "runs").root
    index_run(run, progress=False, num_workers=2)
    export_onnx(run)
    return run


def time_embed(manifest: Path, run: Path, out: Path, workers: int, batch: int) -> dict[str, Any]:
    from herbarium2field.features.extract import embed_dataset
    from herbarium2field.models.frozen import ExtractorSpec
    from herbarium2field.run.card import read_card

    card = read_card(run)
    spec = ExtractorSpec(backbone=card.model["backbone"], weights=card.model["weights"],
                         size=card.preprocessing["input_size"])
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    rep = embed_dataset(manifest, out, spec, batch_size=batch, num_workers=workers, use_image_cache=False)
    wall = time.perf_counter() - start
    return {"images": rep.embedded, "seconds": round(wall, 2), "images_per_s": round(rep.embedded / wall, 2)}


def time_predict(manifest: Path, run: Path, out: Path, backend: str, workers: int, batch: int) -> dict[str, Any]:
    from herbarium2field.identify.predict import predict_collection

    for f in out.parent.glob(out.name + "*"):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    start = time.perf_counter()
    rep = predict_collection(run, manifest, out, backend=backend, batch_size=batch, num_workers=workers,
                             progress=False)
    wall = time.perf_counter() - start
    if rep.problems:
        raise SystemExit(f"predict reported {rep.problems} problem files")
    return {"images": rep.predicted_now, "seconds": round(wall, 2), "images_per_s": round(rep.predicted_now / wall, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="photos in the collection")
    ap.add_argument("--rounds", type=int, default=1, help="embed / predict torch / predict onnx, this many times")
    ap.add_argument("--workers", type=int, default=2, help="decoding processes (both commands)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="h2f-bench-predict-")
    work = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    info = machine_info()
    t = time.perf_counter()
    run = build_run(work)
    manifest = make_photos(work / "synth" / "train", work / "collection", args.n)
    setup_s = time.perf_counter() - t
    rounds = []
    for r in range(args.rounds):
        load_before = load_average()
        row = {"round": r, "embed": time_embed(manifest, run, work / "features", args.workers, args.batch),
               "predict_torch": time_predict(manifest, run, work / "answers_torch.csv", "torch", args.workers,
                                             args.batch),
               "predict_onnx": time_predict(manifest, run, work / "answers_onnx.csv", "onnx", args.workers,
                                            args.batch),
               "load_average_1min": [load_before, load_average()]}
        for b in ("torch", "onnx"):
            row[f"ratio_{b}"] = round(row[f"predict_{b}"]["seconds"] / row["embed"]["seconds"], 3)
        rounds.append(row)
    ratios = {b: float(np.median([r[f"ratio_{b}"] for r in rounds])) for b in ("torch", "onnx")}
    print_table(f"{args.n} photos, Lite0 224 px, {args.workers} decoding workers", [
        {"round": r["round"], "embed img/s": r["embed"]["images_per_s"],
         "predict torch img/s": r["predict_torch"]["images_per_s"],
         "predict onnx img/s": r["predict_onnx"]["images_per_s"], "torch/embed": r["ratio_torch"],
         "onnx/embed": r["ratio_onnx"], "load": "→".join(f"{x:.1f}" for x in r["load_average_1min"])}
        for r in rounds])
    result = {"machine": info, "n": args.n, "workers": args.workers, "batch": args.batch, "setup_s": round(setup_s, 1),
              "backbone": "tf_efficientnet_lite0 (offline ImageNet weights), 224 px", "target_ratio": TARGET,
              "rounds": rounds, "median_ratio": ratios,
              "within_target": {b: v <= TARGET for b, v in ratios.items()}}
    print(f"wrote {write_result('predict', result)}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
