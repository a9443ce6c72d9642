"""Identification latency per photo on the CPU: eager PyTorch vs ONNX Runtime, same network, same input.

Usage: ``.venv/bin/python benchmarks/bench_identify.py [--backbones convnextv2_nano,efficientnet_lite0]
[--size 224] [--repeat 60] [--threads 2]``

For each backbone an ``H2FNet`` (backbone + 512-d neck + ArcFace head over 100 species, random weights:
latency does not depend on the weights) is exported with ``herbarium2field.identify.export`` and run
at batch 1 with ``--threads`` intra-op threads. Eager and ONNX run in alternating blocks of 10 calls
(with a short pause at each switch, so one runtime's spinning worker threads never steal the cores from
the other), so both see the same machine load; p50/p95 over ``--repeat`` calls after a warm-up. The
machine's load average is recorded: on a shared machine, compare the two columns, not absolute numbers. Also timed: decoding and
preprocessing one real field photo (``load_rgb`` + the eval transform), which every request pays on top.
Checks that both give the same top-5 and near-identical embeddings. Writes
``benchmarks/results/identify.json``.

``--combination RUN`` instead measures how several photos of one plant are best combined (mean of
probabilities vs geometric mean, see ``identify.combine``) with a trained run, on its validation photos
and on the test photos (random same-species groups of 2 and 3 photos), and writes
``benchmarks/results/identify_combination.json``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, print_table, write_result  # noqa: E402
from herbarium2field.config import ModelConfig  # noqa: E402
from herbarium2field.data.transforms import Preprocessing  # noqa: E402
from herbarium2field.identify.export import _NetworkGraph, export_module  # noqa: E402
from herbarium2field.models.extractor import OnnxExtractor  # noqa: E402
from herbarium2field.models.network import H2FNet  # noqa: E402

CLASSES = 100


def pct(ms: list[float], q: float) -> float:
    return round(float(np.percentile(ms, q)), 2)


def bench_backbone(name: str, size: int, repeat: int, threads: int, folder: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = H2FNet(
            ModelConfig(backbone=name, pretrained=False, embedding_dim=512, head="arcface"),
            CLASSES,
            load_weights=False,
        ).eval()
    graph = _NetworkGraph(net).eval()
    path = folder / f"{name}.onnx"
    t = time.perf_counter()
    export_module(graph, torch.randn(2, 3, size, size), path, ["embeddings", "scores"])
    export_s = time.perf_counter() - t
    pre = Preprocessing(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    sessions = [OnnxExtractor.from_file(path, pre, threads=threads).session]  # a list: freed before the next model
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    xn = x.numpy()

    def eager() -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            e, s = graph(x)
        return e.numpy(), s.numpy()

    def onnx() -> list[np.ndarray]:
        return sessions[0].run(None, {"images": xn})

    for _ in range(5):
        eager()
        onnx()
    t_eager: list[float] = []
    t_onnx: list[float] = []
    block = 10
    for _ in range(max(1, repeat // block)):  # alternate blocks: both see the same machine load
        for fn, times in ((eager, t_eager), (onnx, t_onnx)):
            time.sleep(0.2)  # let the other runtime's worker threads stop spinning first
            fn()  # first call after a switch warms caches; not timed
            for _ in range(block):
                t = time.perf_counter()
                out = fn()
                times.append((time.perf_counter() - t) * 1e3)
            if fn is eager:
                e_ref, s_ref = out
            else:
                e_onnx, s_onnx = out
    same_top5 = bool((np.argsort(-s_ref)[:, :5] == np.argsort(-s_onnx)[:, :5]).all())
    row = {
        "backbone": name,
        "input": size,
        "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
        "eager_p50_ms": pct(t_eager, 50),
        "eager_p95_ms": pct(t_eager, 95),
        "onnx_p50_ms": pct(t_onnx, 50),
        "onnx_p95_ms": pct(t_onnx, 95),
        "speedup_p50": round(float(np.median(t_eager) / np.median(t_onnx)), 2),
        "max_abs_diff_emb": float(np.abs(e_ref - e_onnx).max()),
        "same_top5": same_top5,
        "export_s": round(export_s, 1),
        "onnx_mb": round(path.stat().st_size / 1e6, 1),
    }
    print_table(name, [row])
    sessions.clear()  # free ONNX Runtime's thread pool now: a lingering one slowed the next model's eager runs
    gc.collect()
    return row


def preprocessing_ms(size: int, repeat: int) -> dict[str, Any] | None:
    """Decode + resize + normalise one real field photo, as a request does before the network runs."""
    from herbarium2field.data.images import load_rgb
    from herbarium2field.data.transforms import eval_transform
    from herbarium2field.identify.service import photo_min_side
    from herbarium2field.paths import shared_data_dir

    photos = sorted((shared_data_dir() / "aml-sample" / "train" / "photo").rglob("*.jpg"))
    if not photos:
        return None
    pre = Preprocessing(size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    transform = eval_transform(pre)
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        transform(load_rgb(photos[i % len(photos)], min_side=photo_min_side(size)))
        times.append((time.perf_counter() - t) * 1e3)
    img = load_rgb(photos[0])
    return {"photo_px": list(img.size), "p50_ms": pct(times, 50), "p95_ms": pct(times, 95)}


def combination(run: Path, per_class: int = 50) -> None:
    """Single photo vs combined photos, on the run's validation photos (stored in the run) and its test split."""
    from herbarium2field.data.loaders import image_source
    from herbarium2field.data.manifest import labels_of, read_dataset
    from herbarium2field.run.artefacts import ValidationSet
    from herbarium2field.run.load import load_model
    from herbarium2field.scoring.combine import compare_combinations, log_probabilities

    model = load_model(run)
    card = model.card
    index = {c: i for i, c in enumerate(card.class_ids)}
    val = ValidationSet.load(model.run, card)
    val = val.subset((val.domains == 1) & (val.labels >= 0))
    out: dict[str, Any] = {"run": str(run), "backbone": card.model.get("backbone"), "per_class": per_class}
    if len(val.labels):
        scores = model.scorer(val.embeddings, val.logits)
        out["validation"] = compare_combinations(log_probabilities(scores, model.score_kind), val.labels,
                                                 per_class=per_class)
    ds = read_dataset(card.dataset["root"], check="exists")
    test = ds.split("test")
    test = test[test.class_id.isin(card.class_ids)].reset_index(drop=True)
    if len(test):
        _, scores = model.predict_table(test, image_source(ds, min_size=model.pre.input_size), num_workers=0)
        out["test"] = compare_combinations(log_probabilities(scores, model.score_kind), labels_of(test, index),
                                           per_class=per_class)
    print(out)
    write_result("identify_combination", {"machine": machine_info(), **out})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--combination", type=Path, default=None, help="a trained run: measure photo combination")
    ap.add_argument("--backbones", default="convnextv2_nano,efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.combination is not None:
        combination(args.combination)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones.split(","):
            rows.append(bench_backbone(name, args.size, args.repeat, args.threads, Path(tmp)))
    pre = preprocessing_ms(args.size, args.repeat)
    print_table("latency per photo, batch 1 (ms)", rows)
    if pre:
        print(
            f"decode + preprocess one real field photo {pre['photo_px']}: p50 {pre['p50_ms']} ms, "
            f"p95 {pre['p95_ms']} ms"
        )
    write_result(
        "identify" if args.threads == 2 else f"identify_{args.threads}thread",
        {
            "machine": machine_info(),
            "threads": args.threads,
            "batch": 1,
            "repeat": args.repeat,
            "torch": torch.__version__,
            "rows": rows,
            "preprocess_real_photo": pre,
        },
    )


if __name__ == "__main__":
    main()
