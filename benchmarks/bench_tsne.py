"""t-SNE speed: openTSNE vs scikit-learn on the same embeddings, measured side by side in one run.

Embeddings: 5,000 x 512-d clustered points (100 species, long-tailed, herbarium sheets plus field photos
with a domain offset), L2-normalised as ``viz.tsne.tsne_2d`` does. Both libraries get the same
perplexity, PCA initialisation, seed, Euclidean metric on unit vectors and the same number of gradient
iterations (250 early exaggeration + 500); everything else is each library's default. Quality: 10-NN
preservation on all points and trustworthiness on a fixed 1,000-point subsample. The machine is shared,
so configurations are interleaved, the load average is recorded before and after, and the fastest
(and the median) of ``--repeat`` runs is reported. Thread pools are capped per configuration.

    .venv/bin/python benchmarks/bench_tsne.py            # -> benchmarks/results/tsne.json
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from sklearn.manifold import trustworthiness
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine_info, print_table  # noqa: E402
from herbarium2field.io import write_json  # noqa: E402
from herbarium2field.system import load_average  # noqa: E402
from herbarium2field.viz.tsne import l2_normalise, tsne_2d  # noqa: E402


def clustered_embeddings(n: int, dim: int, n_cls: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Species clusters with genus structure and a field-photo domain offset (roughly like a trained net)."""
    rng = np.random.default_rng(seed)
    genus = rng.normal(size=(max(1, n_cls // 6), dim))
    centres = genus[np.arange(n_cls) % len(genus)] * 0.8 + rng.normal(size=(n_cls, dim)) * 0.7
    weights = rng.pareto(1.2, size=n_cls) + 0.3
    y = rng.choice(n_cls, size=n, p=weights / weights.sum())
    field = rng.random(n) < 0.2
    shift = rng.normal(size=dim) * 0.9
    X = centres[y] + rng.normal(scale=0.8, size=(n, dim)) + field[:, None] * shift
    return X.astype(np.float32), y


def knn_preservation(high: np.ndarray, low: np.ndarray, k: int = 10) -> float:
    """Mean share of each point's k nearest neighbours in the embedding space that stay neighbours in 2-D."""
    a = NearestNeighbors(n_neighbors=k + 1).fit(high).kneighbors(high, return_distance=False)[:, 1:]
    b = NearestNeighbors(n_neighbors=k + 1).fit(low).kneighbors(low, return_distance=False)[:, 1:]
    return float(np.mean([len(set(x) & set(z)) / k for x, z in zip(a, b, strict=True)]))


def machine() -> dict[str, Any]:
    """:func:`machine_info` plus openTSNE's version and the load before the runs (the load after is added)."""
    return {**machine_info(), "openTSNE": version("openTSNE"), "load_avg_1min_before": load_average()}


def run_once(X: np.ndarray, backend: str, threads: int, perplexity: float) -> tuple[float, np.ndarray]:
    # Thread pools (BLAS, OpenMP) are capped too: scikit-learn's Barnes-Hut gradient uses every core through
    # OpenMP whatever its n_jobs, which would make an "n_jobs=1" comparison unfair.
    with threadpool_limits(limits=threads):
        t0 = time.perf_counter()
        out = tsne_2d(X, perplexity=perplexity, seed=0, n_jobs=threads, backend=backend)
        return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--perplexity", type=float, default=30.0)
    ap.add_argument(
        "--threads", default="1,2", help="comma-separated thread counts (n_jobs and thread pools)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration (interleaved); min is kept")
    ap.add_argument("--out", type=Path, default=RESULTS / "tsne.json")
    args = ap.parse_args()

    info = machine()
    X, _ = clustered_embeddings(args.n, args.dim, 100, seed=0)
    Xn = l2_normalise(X)
    sub = np.random.default_rng(1).choice(args.n, size=min(1000, args.n), replace=False)
    configs = [(b, int(t)) for t in args.threads.split(",") for b in ("opentsne", "sklearn")]
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    coords: dict[tuple[str, int], list[np.ndarray]] = {c: [] for c in configs}
    for _ in range(args.repeat):
        for c in configs:  # interleaved, so load from other processes hits every configuration alike
            s, out = run_once(X, c[0], c[1], args.perplexity)
            times[c].append(s)
            coords[c].append(out)
    rows = []
    for b, t in configs:
        emb = coords[(b, t)][0]
        rows.append(
            {
                "backend": b,
                "threads": t,
                "wall_s_min": min(times[(b, t)]),
                "wall_s_median": float(np.median(times[(b, t)])),
                "wall_s_all": times[(b, t)],
                "deterministic": bool(all(np.array_equal(emb, o) for o in coords[(b, t)])),
                "knn10_preservation": knn_preservation(Xn, emb, 10),
                "trustworthiness_k10_sub1000": float(trustworthiness(Xn[sub], emb[sub], n_neighbors=10)),
            }
        )
    speed = {}
    for t in sorted({t for _, t in configs}):
        o = next(r for r in rows if r["backend"] == "opentsne" and r["threads"] == t)
        s = next(r for r in rows if r["backend"] == "sklearn" and r["threads"] == t)
        speed[f"threads_{t}"] = {
            "sklearn_over_opentsne_min": s["wall_s_min"] / o["wall_s_min"],
            "sklearn_over_opentsne_median": s["wall_s_median"] / o["wall_s_median"],
        }
    info["load_avg_1min_after"] = load_average()
    result = {
        "benchmark": "tsne",
        "data": {
            "n": args.n,
            "dim": args.dim,
            "classes": 100,
            "kind": "Gaussian species clusters + domain offset",
            "normalised": "L2, Euclidean on unit vectors",
        },
        "params": {
            "perplexity": args.perplexity,
            "init": "pca",
            "seed": 0,
            "iterations": "250 early exaggeration + 500",
            "repeat": args.repeat,
        },
        "results": rows,
        "time_ratio": speed,
        "default_backend": inspect.signature(tsne_2d).parameters["backend"].default,
        "machine": info,
    }
    write_json(args.out, result)

    console = Console()
    print_table(
        f"t-SNE, {args.n} x {args.dim}-d, perplexity {args.perplexity:g}, {args.repeat} runs each",
        [
            {
                "backend": r["backend"],
                "threads": r["threads"],
                "min s": r["wall_s_min"],
                "median s": r["wall_s_median"],
                "all runs s": ", ".join(f"{x:.1f}" for x in r["wall_s_all"]),
                "10-NN kept": r["knn10_preservation"],
                "trust@10": r["trustworthiness_k10_sub1000"],
            }
            for r in rows
        ],
        formats={"min s": ".1f", "median s": ".1f", "10-NN kept": ".3f", "trust@10": ".3f"},
        console=console,
    )
    for k, v in speed.items():
        console.print(
            f"{k}: sklearn / openTSNE wall time = {v['sklearn_over_opentsne_min']:.2f} (min), "
            f"{v['sklearn_over_opentsne_median']:.2f} (median)"
        )
    console.print(
        f"load avg {info['load_avg_1min_before']:.2f} -> {info['load_avg_1min_after']:.2f}; "
        f"written to {args.out}"
    )


if __name__ == "__main__":
    main()
