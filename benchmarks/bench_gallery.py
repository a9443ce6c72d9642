"""Gallery search time vs gallery size: exact (IndexFlatIP) vs approximate (IVF) faiss, recall@10.

Usage: ``.venv/bin/python benchmarks/bench_gallery.py [--sizes 1000,100000,1000000] [--queries 200]``

For each size, one run builds both indexes over the same 512-d vectors and times single-photo queries
(one query per call, as the server sends them; p50/p95 over ``--queries``), interleaving nothing else.
Recall@10 = share of the exact top-10 the approximate index returns. Vectors are *clustered* like a
trained model's embeddings (one centre per ~300 sheets, as in PlantCLEF; within-class cosine ~0.5);
``--uniform`` adds the worst case for any approximate index, uniform random unit vectors, at 100k.
Writes ``benchmarks/results/gallery.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info, print_table, write_result  # noqa: E402
from herbarium2field.retrieval.index import EXACT_MAX, build_index, search  # noqa: E402

DIM = 512


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = max(10, n // 300)
    centres = unit(rng.standard_normal((k, DIM), dtype=np.float32))
    noise = 0.045  # per dimension: |noise| ~ 1 -> within-class cosine ~0.5, like real sheet embeddings
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):  # in chunks: 1M x 512 float64 temporaries would need 4 GB
        m = min(100_000, n - s)
        out[s : s + m] = unit(
            centres[rng.integers(0, k, m)] + noise * rng.standard_normal((m, DIM), dtype=np.float32)
        )
    q = unit(
        centres[rng.integers(0, k, queries)] + noise * rng.standard_normal((queries, DIM), dtype=np.float32)
    )
    return out, q.astype(np.float32)


def uniform(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        unit(rng.standard_normal((n, DIM), dtype=np.float32)),
        unit(rng.standard_normal((queries, DIM), dtype=np.float32)),
    )


def latencies(index: faiss.Index, q: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    times, ids = [], []
    search(index, q[:1], k)  # warm-up
    for row in q:
        t = time.perf_counter()
        _, i = search(index, row[None], k)
        times.append(time.perf_counter() - t)
        ids.append(i[0])
    return np.array(times) * 1e3, np.array(ids)


def bench(n: int, queries: int, data: str) -> list[dict[str, Any]]:
    x, q = (clustered if data == "clustered" else uniform)(n, queries)
    rows = []
    exact_ids = None
    for kind in ("flat", "ivf"):
        if kind == "ivf" and n < 2_000:
            continue  # too few vectors to train IVF lists; the gallery uses flat here anyway
        t = time.perf_counter()
        index, spec = build_index(x, kind=kind)
        build = time.perf_counter() - t
        nq = queries if kind == "ivf" or n <= 100_000 else min(queries, 50)  # flat on 1M: ~0.1-0.3 s each
        ms, ids = latencies(index, q[:nq])
        if kind == "flat":
            exact_ids = ids
            recall = 1.0
        else:
            m = min(len(ids), len(exact_ids))  # the exact index may have timed fewer queries
            recall = float(
                np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids[:m], ids[:m], strict=True)])
            )
        rows.append(
            {
                "data": data,
                "size": n,
                "index": kind,
                "nlist": spec.nlist,
                "nprobe": spec.nprobe,
                "build_s": round(build, 2),
                "queries": nq,
                "p50_ms": round(float(np.percentile(ms, 50)), 3),
                "p95_ms": round(float(np.percentile(ms, 95)), 3),
                "recall_at_10": round(recall, 4),
                "default_choice": (kind == "flat") == (n <= EXACT_MAX),
            }
        )
        print_table(f"{data} {n:,}", rows[-1:])
        del index
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--uniform", action="store_true", help="also uniform random vectors at 100k (worst case)")
    ap.add_argument(
        "--threads", type=int, default=2, help="OpenMP threads for building (searches of one query use one)"
    )
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += bench(n, args.queries, "clustered")
    if args.uniform:
        rows += bench(100_000, args.queries, "uniform")
    print_table("gallery search, one query per call (ms)", rows)
    write_result(
        "gallery",
        {
            "machine": machine_info(),
            "threads": args.threads,
            "dim": DIM,
            "exact_max": EXACT_MAX,
            "faiss": faiss.__version__,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
