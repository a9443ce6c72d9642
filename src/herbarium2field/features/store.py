"""The embedding cache: one L2-normalised embedding per dataset image, with everything it depends on.

Layout of a cache folder (written by ``h2f embed``)::

    OUT/meta.json            format, spec (backbone, weights + sha256, preprocessing, dataset root, image-list
                             hash, source), layout (images, dim, dtype, shard size), classes, completion state
    OUT/rows.parquet         the dataset rows (path, class_id, species, domain, split, has_pairs, ...) in
                             cache order: row i of the table is row i of the embeddings
    OUT/shards/00000.npy     rows [0, S) as a [S, D] float16/float32 array; shard k holds rows [kS, (k+1)S)

Why ``.npy`` shards + Parquet: ``.npy`` is numpy's own format (no dependency, memory-mappable, exact dtype,
no zip layer as in ``.npz``), and fixed-size shards make extraction resumable: each shard is written to a
temporary file and renamed into place, so a shard that exists is complete, a killed run loses at most the
shard in progress, and a restart embeds only the missing shards. Parquet (pyarrow) keeps the manifest's
column types (string class ids, booleans) exactly, is compact, and pandas reads it in one call. The
metadata is JSON so that a person can read what a cache is.

Staleness: the embeddings depend on the backbone, the weights (their sha256), the preprocessing, the
dataset root and the ordered image list; that *spec* is recorded, and reopening a cache with another spec
is refused (``--force`` rebuilds). Labels do not change embeddings: if only the labels of the same images
changed, ``rows.parquet`` is simply rewritten. An image edited in place under the same path is not
detected (rebuild with ``--force``). An image that cannot be decoded gets a NaN row; readers expose it as
``ok == False`` with a zero embedding.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from herbarium2field.errors import H2FError
from herbarium2field.hashing import lines_sha256
from herbarium2field.io import atomic_path, write_json

FORMAT = 1
META = "meta.json"
ROWS = "rows.parquet"
SHARDS = "shards"
DTYPES = ("float16", "float32")
#: Spec fields whose change makes the embeddings different (anything else is bookkeeping).
SPEC_FIELDS = ("backbone", "weights_sha256", "preprocessing", "source", "dataset_root", "images_sha256")
_HINT_MAKE = "make one with `h2f embed DATA --backbone NAME OUT` (or `--run runs/NAME`)"


@dataclass
class CacheSpec:
    """What the embeddings depend on: two caches with equal specs hold the same numbers."""

    backbone: str
    weights: (
        str  # as given: a file, "efficientnet_lite0:offline", "timm hub", "random init", a run checkpoint
    )
    weights_sha256: str | None
    preprocessing: dict[str, Any]
    dataset_root: str
    images_sha256: str
    n_images: int
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "backbone"})

    def differences(self, other: CacheSpec) -> list[str]:
        """Human-readable list of what differs in the fields that change embeddings."""
        out = []
        for name in SPEC_FIELDS:
            a, b = _jsonable(getattr(self, name)), _jsonable(getattr(other, name))
            if a != b:
                if name == "images_sha256":
                    out.append(
                        f"image list changed ({self.n_images} images in the cache, {other.n_images} now)"
                    )
                else:
                    out.append(f"{name}: cache has {_short(a)}, requested {_short(b)}")
        return out


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x))


def _short(x: Any) -> str:
    s = json.dumps(x) if not isinstance(x, str) else x
    return s if len(s) <= 120 else s[:117] + "..."


def images_sha256(paths: Sequence[str]) -> str:
    """Hash of the ordered image list (what rows the cache has, and in which order)."""
    return lines_sha256(str(p) for p in paths)


# ---- writing -----------------------------------------------------------------------------------------


def shard_path(folder: Path, k: int) -> Path:
    return Path(folder) / SHARDS / f"{k:05d}.npy"


def n_shards(n_images: int, shard_size: int) -> int:
    return -(-n_images // shard_size) if n_images else 0


def shard_rows(layout: dict[str, Any], k: int) -> range:
    """The image rows that shard ``k`` holds (the last shard may be short)."""
    s, n = layout["shard_size"], layout["n_images"]
    return range(k * s, min((k + 1) * s, n))


class CacheWriter:
    """Creates or resumes a cache folder; :meth:`pending` says which shards still need embedding."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.meta = meta

    # -- opening

    @classmethod
    def open(
        cls,
        folder: str | Path,
        spec: CacheSpec,
        table: pd.DataFrame,
        classes: dict[str, str],
        *,
        dtype: str = "float16",
        shard_size: int = 1024,
        force: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> CacheWriter:
        """Start a new cache, or resume the one in ``folder`` if its spec matches (else H2FError).

        With ``force`` a cache with another spec is deleted and rebuilt; a folder that is not a cache is
        never deleted. On resume the recorded dtype and shard size win over the requested ones. The
        embedding size is recorded with the first shard.
        """
        folder = Path(folder)
        if dtype not in DTYPES:
            raise H2FError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
        if shard_size < 1:
            raise H2FError(f"shard size must be at least 1, got {shard_size}")
        if len(table) != spec.n_images:
            raise ValueError("table and spec disagree on the number of images")
        meta = _existing_meta(folder)
        if meta is not None:
            old = CacheSpec(**meta["spec"])
            diffs = old.differences(spec)
            if not diffs:
                writer = cls(folder, meta)
                writer.meta["spec"] = asdict(spec)  # e.g. a weights path spelled differently
                writer.meta["classes"] = classes
                writer.meta.update(extra or {})
                writer._write_rows(table)
                writer.save_meta()
                return writer
            if not force:
                raise H2FError(
                    "this folder holds embeddings made differently (stale cache):\n  - "
                    + "\n  - ".join(diffs),
                    path=folder,
                    hint="pass --force to delete and rebuild it, or choose another output folder",
                )
            _remove_cache(folder)
        elif folder.exists() and any(folder.iterdir()):
            raise H2FError(
                "output folder exists and is not an embedding cache (no meta.json); refusing to "
                "write into it",
                path=folder,
                hint="choose a new or empty folder",
            )
        now = _now()
        meta = {
            "format": FORMAT,
            "kind": "h2f-embeddings",
            "spec": asdict(spec),
            "layout": {
                "n_images": len(table),
                "dim": None,
                "dtype": dtype,
                "shard_size": int(shard_size),
                "n_shards": n_shards(len(table), shard_size),
                "l2_normalised": True,
            },
            "classes": classes,
            "complete": False,
            "failed": [],
            "created": now,
            "updated": now,
            **(extra or {}),
        }
        writer = cls(folder, meta)
        (folder / SHARDS).mkdir(parents=True, exist_ok=True)
        writer._write_rows(table)
        writer.save_meta()
        return writer

    # -- state

    @property
    def layout(self) -> dict[str, Any]:
        return self.meta["layout"]

    def rows_of(self, k: int) -> range:
        return shard_rows(self.layout, k)

    def is_done(self, k: int) -> bool:
        """A shard file that exists and has the right shape and dtype (written atomically, so complete)."""
        if self.layout["dim"] is None:
            return False
        try:
            a = np.load(shard_path(self.folder, k), mmap_mode="r")
        except (OSError, ValueError):
            return False
        return a.shape == (len(self.rows_of(k)), self.layout["dim"]) and str(a.dtype) == self.layout["dtype"]

    def pending(self) -> list[int]:
        return [k for k in range(self.layout["n_shards"]) if not self.is_done(k)]

    # -- writes

    def write_shard(self, k: int, embeddings: np.ndarray) -> None:
        if self.layout["dim"] is None:
            self.layout["dim"] = int(embeddings.shape[1])
            self.save_meta()
        expected = (len(self.rows_of(k)), self.layout["dim"])
        if embeddings.shape != expected:
            raise ValueError(f"shard {k}: got {embeddings.shape}, expected {expected}")
        arr = np.ascontiguousarray(embeddings, dtype=self.layout["dtype"])
        with atomic_path(shard_path(self.folder, k)) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)

    def finish(self, **info: Any) -> None:
        """Record completion (and run information such as failed images, speed)."""
        failed = []
        for k in range(self.layout["n_shards"]):
            a = np.load(shard_path(self.folder, k), mmap_mode="r")
            bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
            failed += [int(self.rows_of(k)[i]) for i in bad]
        rows = pd.read_parquet(self.folder / ROWS, columns=["path"])
        self.meta["failed"] = [str(rows.path.iloc[i]) for i in failed]
        self.meta["complete"] = True
        self.meta.update(info)
        self.save_meta()

    def save_meta(self) -> None:
        self.meta["updated"] = _now()
        write_json(self.folder / META, self.meta)

    def _write_rows(self, table: pd.DataFrame) -> None:
        with atomic_path(self.folder / ROWS) as tmp:
            table.reset_index(drop=True).to_parquet(tmp, index=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _existing_meta(folder: Path) -> dict[str, Any] | None:
    """The metadata of an existing cache; None when the folder is absent or empty of a cache."""
    path = folder / META
    if not path.is_file():
        return None
    return _read_meta(path)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise H2FError(
            f"embedding cache metadata is unreadable ({exc})",
            path=path,
            hint="delete the folder and re-run `h2f embed`, or pass --force",
        ) from None
    if not isinstance(meta, dict) or meta.get("kind") != "h2f-embeddings":
        raise H2FError("not an h2f embedding cache (meta.json of another kind)", path=path)
    if meta.get("format") != FORMAT:
        raise H2FError(
            f"embedding cache format {meta.get('format')} is not supported (this h2f reads {FORMAT})",
            path=path,
            hint="rebuild it with `h2f embed ... --force`",
        )
    try:
        CacheSpec(**meta["spec"])
        for key in ("n_images", "dim", "dtype", "shard_size", "n_shards"):
            meta["layout"][key]  # noqa: B018 - presence check
    except (KeyError, TypeError) as exc:
        raise H2FError(
            f"embedding cache metadata is damaged (missing {exc})",
            path=path,
            hint="rebuild it with `h2f embed ... --force`",
        ) from None
    return meta


def _remove_cache(folder: Path) -> None:
    """Delete only what a cache consists of (never other files a user put there)."""
    shutil.rmtree(folder / SHARDS, ignore_errors=True)
    for name in (META, ROWS):
        (folder / name).unlink(missing_ok=True)


# ---- reading -----------------------------------------------------------------------------------------


@dataclass
class Features:
    """A complete embedding cache in memory: ``table`` row i ↔ ``embeddings`` row i."""

    path: Path
    meta: dict[str, Any]
    table: pd.DataFrame  # the dataset rows + column ``ok`` (False: image could not be decoded)
    embeddings: np.ndarray  # [N, D] float32, L2-normalised; zeros where not ok

    @property
    def spec(self) -> CacheSpec:
        return CacheSpec(**self.meta["spec"])

    @property
    def classes(self) -> dict[str, str]:
        """``{class_id: species}`` in the dataset's class order (all species, with or without images)."""
        return dict(self.meta["classes"])

    @property
    def class_ids(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def with_pairs(self) -> set[str]:
        t = self.table
        return set(t.loc[(t.split == "train") & (t.domain == "field"), "class_id"].dropna().astype(str))

    def mask(self, split: str | None = None, domain: str | None = None) -> np.ndarray:
        m = np.ones(len(self.table), dtype=bool)
        if split is not None:
            m &= (self.table.split == split).to_numpy()
        if domain is not None:
            m &= (self.table.domain == domain).to_numpy()
        return m

    def select(self, split: str | None = None, domain: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """Rows (in cache order, index reset) and embeddings of a split and/or domain."""
        m = self.mask(split, domain)
        return self.table[m].reset_index(drop=True), self.embeddings[m]


def load_features(path: str | Path) -> Features:
    """Read a complete cache written by ``h2f embed``; H2FError if it is missing, incomplete or damaged."""
    folder = Path(path)
    if folder.is_file() and folder.name == META:
        folder = folder.parent
    if not folder.exists():
        raise H2FError("feature cache not found", path=folder, hint=_HINT_MAKE)
    if not (folder / META).is_file():
        raise H2FError("not an embedding cache: meta.json is missing", path=folder, hint=_HINT_MAKE)
    meta = _read_meta(folder / META)
    lay = meta["layout"]
    try:
        table = pd.read_parquet(folder / ROWS)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise H2FError(
            f"cannot read the image table of the cache ({type(exc).__name__}: {exc})",
            path=folder / ROWS,
            hint="re-run `h2f embed` on this folder to rewrite it",
        ) from None
    if len(table) != lay["n_images"]:
        raise H2FError(
            f"image table has {len(table)} rows but the cache expects {lay['n_images']}",
            path=folder / ROWS,
            hint="rebuild with `h2f embed ... --force`",
        )
    parts = []
    missing = []
    for k in range(lay["n_shards"]):
        rows = len(shard_rows(lay, k))
        p = shard_path(folder, k)
        if not p.is_file():
            missing.append(k)
            continue
        try:
            a = np.load(p)
        except (OSError, ValueError) as exc:
            raise H2FError(
                f"embedding shard is damaged ({exc})",
                path=p,
                hint="delete this file and re-run `h2f embed` with the same options to redo it",
            ) from None
        if a.shape != (rows, lay["dim"]):
            raise H2FError(
                f"embedding shard has shape {a.shape}, expected {(rows, lay['dim'])}",
                path=p,
                hint="delete this file and re-run `h2f embed` with the same options to redo it",
            )
        parts.append(a)
    if missing:
        raise H2FError(
            f"embedding cache is incomplete: {len(missing)} of {lay['n_shards']} shards missing "
            "(an interrupted `h2f embed`?)",
            path=folder,
            hint="re-run the same `h2f embed` command: it continues where it stopped",
        )
    emb = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, lay["dim"] or 0), np.float32)
    ok = np.isfinite(emb).all(axis=1)
    emb[~ok] = 0.0
    table = table.copy()
    table["ok"] = ok
    return Features(folder, meta, table, emb)
