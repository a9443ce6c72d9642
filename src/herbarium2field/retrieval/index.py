"""Nearest-neighbour search over L2-normalised embeddings with faiss (inner product = cosine similarity).

Small galleries get an exact index (``IndexFlatIP``): below :data:`EXACT_MAX` vectors a brute-force scan
answers one query in a few milliseconds and is always right. Larger ones (a full PlantCLEF gallery has
~320k sheets) get an inverted-file index (``IndexIVFFlat``): the vectors are bucketed around ``nlist``
k-means centroids and a query scans only the ``nprobe`` closest buckets. IVF rather than HNSW because it
builds in a fraction of the time (k-means on a sample, then one assignment pass; HNSW M=32 needed ~65 s
per 100k vectors on 2 cores, IVF ~10 s) at the same recall and latency (``benchmarks/bench_gallery.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from herbarium2field.errors import H2FError
from herbarium2field.io import atomic_path

#: Largest gallery searched exactly; above it an IVF index is built.
EXACT_MAX = 50_000
#: k-means training points per IVF list (faiss warns below 39).
TRAIN_PER_LIST = 40
#: Query batches up to this size are searched single-threaded (see :func:`search`).
SMALL_BATCH = 8


@dataclass(frozen=True)
class IndexSpec:
    """How an index was built: recorded in the gallery metadata and shown by ``h2f index``."""

    kind: str  # "flat" | "ivf"
    size: int
    dim: int
    nlist: int = 0
    nprobe: int = 0

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    def describe(self) -> str:
        if self.kind == "flat":
            return f"exact (IndexFlatIP, {self.size:,} vectors)"
        return f"approximate (IndexIVFFlat, {self.size:,} vectors, nlist={self.nlist}, nprobe={self.nprobe})"


def ivf_params(n: int) -> tuple[int, int]:
    """``(nlist, nprobe)`` for ``n`` vectors: ~4·sqrt(n) lists (faiss' rule of thumb), probing 1/32 of
    them (at least 16), which keeps recall@10 >= 0.95 on clustered embeddings while scanning ~3% of
    the gallery."""
    nlist = int(min(max(64, 4 * math.sqrt(n)), 65_536, max(1, n // TRAIN_PER_LIST)))
    return nlist, min(nlist, max(16, nlist // 32))


def build_index(
    vectors: np.ndarray,
    *,
    kind: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
) -> tuple[faiss.Index, IndexSpec]:
    """Build a cosine-similarity index over L2-normalised ``vectors`` [N, D] (float32).

    ``kind``: ``auto`` (exact up to :data:`EXACT_MAX` vectors, else IVF), ``flat`` or ``ivf``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise H2FError(f"cannot index {x.shape} vectors: need a non-empty [N, D] array")
    n, d = x.shape
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, IndexSpec("flat", n, d)
    if kind != "ivf":
        raise ValueError(f"unknown index kind {kind!r}")
    auto_nlist, auto_nprobe = ivf_params(n)
    nlist = nlist or auto_nlist
    nprobe = min(nprobe or (auto_nprobe if nlist == auto_nlist else max(1, nlist // 32)), nlist)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = (
        x if n <= nlist * TRAIN_PER_LIST else x[np.sort(rng.choice(n, nlist * TRAIN_PER_LIST, replace=False))]
    )
    index.cp.seed = seed  # deterministic k-means
    index.train(sample)
    index.add(x)
    index.nprobe = nprobe
    return index, IndexSpec("ivf", n, d, nlist, nprobe)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(similarities [Q, k], row ids [Q, k])``; ids are -1 where fewer than ``k`` were found.

    faiss' search is thread-safe for concurrent readers, so one index serves every request. A few
    queries (one identification) are searched on one OpenMP thread: splitting such a small job costs
    more than it gains, and on a busy CPU (the model's own threads, other requests) faiss' spinning
    workers made a 20k-sheet search 6x slower (16 ms vs 2.7 ms). The setting is per calling thread
    (OpenMP ICVs are thread-local) and restored afterwards, so it never changes torch's threads.
    """
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    if len(q) > SMALL_BATCH:
        return index.search(q, k)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(q, k)
    finally:
        faiss.omp_set_num_threads(before)


def save_index(index: faiss.Index, path: Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: Path, spec: IndexSpec | None = None) -> faiss.Index:
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise H2FError(
            f"cannot read the faiss index ({str(exc).splitlines()[0][:200]})",
            path=path,
            hint="rebuild it with `h2f index RUN --force`",
        ) from None
    if spec is not None and spec.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    return index
