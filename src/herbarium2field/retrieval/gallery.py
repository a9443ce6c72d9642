"""The herbarium gallery of a run: every training sheet embedded by the run's model, with thumbnails and a
faiss index, so that an identification can show the sheets that back it.

```
runs/<name>/gallery/
  meta.json        format, model fingerprint, data fingerprint, index spec, counts, skipped images
  table.csv        one row per sheet: gallery id, image id, class id, species, relative path (row = vector)
  embeddings.npy   float32 [N, D], L2-normalised, rows grouped by class (class order of the model card)
  index.faiss      exact IndexFlatIP, or IVF above retrieval.index.EXACT_MAX sheets
  thumbs.bin       the JPEG thumbnails, concatenated; thumbs_offsets.npy [N + 1] int64 byte offsets
```

Rows are grouped by class, so the sheets of one species are a contiguous slice: "best sheets of this
species" is an exact scan of that slice (tens to hundreds of vectors), while the faiss index answers
"nearest sheets of any species" over the whole gallery. The folder is built beside the old one and
swapped in when complete, so a crash never leaves a half-written gallery in place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from herbarium2field.data.images import load_rgb
from herbarium2field.data.loaders import image_source
from herbarium2field.data.manifest import Dataset
from herbarium2field.errors import H2FError, ImageError
from herbarium2field.io import write_json
from herbarium2field.progress import image_progress
from herbarium2field.retrieval.index import IndexSpec, build_index, load_index, save_index, search
from herbarium2field.run.card import ModelCard
from herbarium2field.run.fingerprint import images_fingerprint, model_fingerprint, same_model
from herbarium2field.run.load import RunModel
from herbarium2field.run.paths import RunPaths
from herbarium2field.system import usable_cores

FORMAT_VERSION = 2
#: Long side of the stored thumbnails (px) and their JPEG quality: sharp on a phone at 2x density in a
#: card, ~10-15 kB each (a 320k-sheet gallery ~4 GB). The full sheet is served from the dataset on demand.
THUMB_SIZE = 256
THUMB_QUALITY = 85


_MATCH_COLUMNS = ("gallery_id", "image_id", "class_id", "species", "path")


@dataclass
class Match:
    """One gallery sheet matched to a query."""

    row: int
    gallery_id: str
    image_id: str
    class_id: str
    species: str
    path: str
    similarity: float
    photo: int = 0  # which query photo it matched best

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.gallery_id,
            "image_id": self.image_id,
            "class_id": self.class_id,
            "species": self.species,
            "path": self.path,
            "similarity": round(self.similarity, 4),
            "photo": self.photo,
        }


@dataclass
class BuildReport:
    folder: Path
    up_to_date: bool
    reason: str
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    index: str = ""


def gallery_rows(ds: Dataset, card: ModelCard) -> pd.DataFrame:
    """Training herbarium sheets of the model's species, grouped by class in the model's class order."""
    t = ds.table
    t = t[(t.split == "train") & (t.domain == "herbarium") & t.class_id.isin(card.class_ids)]
    order = {c: i for i, c in enumerate(card.class_ids)}
    t = t.assign(_cls=t.class_id.map(order)).sort_values(["_cls", "path"], kind="stable")
    names = dict(zip(card.class_ids, card.species, strict=True))
    out = pd.DataFrame(
        {
            "image_id": t.image_id.astype(str).to_numpy(),
            "class_id": t.class_id.astype(str).to_numpy(),
            "path": t.path.astype(str).to_numpy(),
        }
    )
    out["species"] = [names[c] for c in out.class_id]
    out["gallery_id"] = _unique_ids(out.image_id.tolist(), out.class_id.tolist())
    return out[["gallery_id", "image_id", "class_id", "species", "path"]].reset_index(drop=True)


def _unique_ids(image_ids: list[str], class_ids: list[str]) -> list[str]:
    """Image ids are file stems: unique in PlantCLEF, but two folders may both hold ``IMG_0001.jpg``."""
    seen: dict[str, int] = {}
    for i in image_ids:
        seen[i] = seen.get(i, 0) + 1
    return [i if seen[i] == 1 else f"{c}-{i}" for i, c in zip(image_ids, class_ids, strict=True)]


def gallery_status(
    run: Path, card: ModelCard, root: Path, rows: pd.DataFrame, *, fingerprint: str | None = None
) -> tuple[bool, str]:
    """``(fresh, reason)``: fresh when built by this model from these images with this format."""
    meta = read_meta(RunPaths(run).gallery)
    if meta is None:
        return False, "no gallery yet"
    if meta.get("format") != FORMAT_VERSION:
        return False, "gallery format changed"
    if not same_model(meta.get("model"), card):
        return False, "the model changed"
    data = meta.get("data", {})
    fingerprint = fingerprint or images_fingerprint(root, zip(rows.path, rows.class_id, strict=True))
    if data.get("fingerprint") != fingerprint:
        return False, "the herbarium images changed"
    return True, "up to date"


def read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def make_thumbnail(path: Path, size: int = THUMB_SIZE, quality: int = THUMB_QUALITY) -> bytes:
    """A JPEG of the image with its long side ``size`` px (never upsampled)."""
    probe = load_rgb(path, min_side=size // 2)  # cheap DCT-scaled decode, short side >= size/2
    img = load_rgb(path) if max(probe.size) < size else probe  # small originals: no draft loss
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def build_gallery(
    model: RunModel,
    ds: Dataset,
    *,
    force: bool = False,
    progress: bool = False,
    batch_size: int = 32,
    num_workers: int = 2,
    index_kind: str = "auto",
) -> BuildReport:
    """Embed every training herbarium sheet of ``ds`` with the run's model and write ``run/gallery``.

    Skipped (returning ``up_to_date=True``) when the gallery was built by the same model from the same
    images, unless ``force``. Unreadable sheets are left out and listed in the report and metadata.
    """
    run, card = model.run, model.card
    rows = gallery_rows(ds, card)
    if rows.empty:
        raise H2FError(
            "the dataset has no training herbarium sheets of this model's species",
            path=ds.root,
            hint="pass the dataset the model was trained on with --data",
        )
    listed = images_fingerprint(ds.root, zip(rows.path, rows.class_id, strict=True))
    fresh, reason = gallery_status(run, card, ds.root, rows, fingerprint=listed)
    folder = RunPaths(run).gallery
    if fresh and not force:
        return BuildReport(folder, True, reason, images=len(rows))
    start = time.perf_counter()
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        keep, skipped = _write_thumbnails(ds.root, rows, tmp, progress=progress)
        rows = rows[keep].reset_index(drop=True)
        if rows.empty:
            raise H2FError("no herbarium sheet could be read", path=ds.root, hint="run `h2f validate` on it")
        source = image_source(ds, cache=True, min_size=card.preprocessing["input_size"])
        emb, _ = model.predict_table(
            rows.assign(domain="herbarium"),
            source,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            description="embedding herbarium sheets",
        )
        np.save(tmp / "embeddings.npy", np.ascontiguousarray(emb, dtype=np.float32))
        rows.to_csv(tmp / "table.csv", index=False)
        index, spec = build_index(emb, kind=index_kind)
        save_index(index, tmp / "index.faiss")
        write_json(
            tmp / "meta.json",
            {
                "format": FORMAT_VERSION,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": model_fingerprint(card, run),
                "backend": model.backend,
                # of every listed sheet, unreadable ones included: they are skipped again until they change
                "data": {"root": str(Path(ds.root).resolve()), "fingerprint": listed, "images": len(rows)},
                "embedding_dim": int(emb.shape[1]),
                "index": spec.to_dict(),
                "thumbnails": {"max_side": THUMB_SIZE, "quality": THUMB_QUALITY},
                "skipped": skipped,
            },
        )
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildReport(
        folder,
        False,
        reason,
        images=len(rows),
        skipped=skipped,
        seconds=time.perf_counter() - start,
        index=spec.describe(),
    )


def _write_thumbnails(
    root: Path, rows: pd.DataFrame, folder: Path, *, progress: bool
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Write ``thumbs.bin`` + offsets; returns the mask of readable rows and the skipped ones with reasons.

    Decoding every sheet here first also keeps unreadable sheets out of the embedding pass (whose data
    loader would silently substitute another image of the class)."""

    def one(rel: str) -> bytes | str:
        try:
            return make_thumbnail(Path(root) / rel)
        except ImageError as exc:
            return exc.message
        except MemoryError:
            return "out of memory while decoding"

    keep = np.zeros(len(rows), bool)
    offsets = [0]
    skipped: list[tuple[str, str]] = []
    with (
        open(folder / "thumbs.bin", "wb") as f,
        ThreadPoolExecutor(max(1, usable_cores())) as pool,
        image_progress(len(rows), "thumbnails", show=progress) as advance,
    ):
        for i, out in enumerate(pool.map(one, rows.path.tolist())):
            if isinstance(out, bytes):
                f.write(out)
                offsets.append(offsets[-1] + len(out))
                keep[i] = True
            else:
                skipped.append((str(rows.path.iloc[i]), out))
            advance(1)
        f.flush()
        os.fsync(f.fileno())
    np.save(folder / "thumbs_offsets.npy", np.asarray(offsets, dtype=np.int64))
    return keep, skipped


def _swap_in(tmp: Path, folder: Path) -> None:
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


class Gallery:
    """A loaded gallery: read-only, shared by concurrent requests (numpy and faiss reads are thread-safe)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta = read_meta(self.folder)
        if meta is None:
            raise H2FError(
                "no herbarium gallery in this run",
                path=self.folder,
                hint=f"build it with `h2f index {self.folder.parent}`",
            )
        if meta.get("format") != FORMAT_VERSION:
            raise H2FError(
                "the gallery was written by another version of h2f",
                path=self.folder,
                hint=f"rebuild it with `h2f index {self.folder.parent} --force`",
            )
        self.meta = meta
        try:
            self.table = pd.read_csv(self.folder / "table.csv", dtype=str, keep_default_na=False)
            self.embeddings = np.load(self.folder / "embeddings.npy", mmap_mode="r")
            self.offsets = np.load(self.folder / "thumbs_offsets.npy")
        except (OSError, ValueError) as exc:
            raise H2FError(
                f"the gallery is damaged ({exc})",
                path=self.folder,
                hint=f"rebuild it with `h2f index {self.folder.parent} --force`",
            ) from None
        self.spec = IndexSpec(**meta["index"])
        self.index = load_index(self.folder / "index.faiss", self.spec)
        if not (len(self.table) == len(self.embeddings) == len(self.offsets) - 1 == self.index.ntotal):
            raise H2FError(
                "the gallery files disagree on the number of sheets",
                path=self.folder,
                hint=f"rebuild it with `h2f index {self.folder.parent} --force`",
            )
        self.row_of: dict[str, int] = {g: i for i, g in enumerate(self.table.gallery_id)}
        # plain lists for the per-match look-up: a pandas row access costs ~0.5 ms, 15 of them per photo
        self._rows = list(zip(*(self.table[c].tolist() for c in _MATCH_COLUMNS), strict=True))
        cls = self.table.class_id.to_numpy()
        self.slices: dict[str, tuple[int, int]] = {}
        for c in dict.fromkeys(cls):
            idx = np.flatnonzero(cls == c)
            self.slices[str(c)] = (int(idx[0]), int(idx[-1]) + 1)  # contiguous by construction
        self._thumbs = self.folder / "thumbs.bin"
        self._fd = os.open(self._thumbs, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self.table)

    def close(self) -> None:
        os.close(self._fd)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self._fd)

    @classmethod
    def load(cls, run: Path) -> Gallery:
        return cls(RunPaths(run).gallery)

    def check_model(self, run: Path, card: ModelCard) -> None:
        """Refuse a gallery embedded by another model: its vectors would not be comparable."""
        if not same_model(self.meta.get("model"), card):
            raise H2FError(
                "the herbarium gallery was built with an older checkpoint of this run",
                path=self.folder,
                hint=f"rebuild it with `h2f index {run}`",
            )

    def thumbnail(self, gallery_id: str) -> bytes | None:
        """The JPEG thumbnail of a sheet by gallery id; ``None`` for an unknown id (never a file path)."""
        row = self.row_of.get(gallery_id)
        if row is None:
            return None
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return os.pread(self._fd, end - start, start)

    def species_sheets(self, class_id: str) -> pd.DataFrame:
        start, end = self.slices.get(str(class_id), (0, 0))
        return self.table.iloc[start:end]

    def _match(self, row: int, sim: float, photo: int = 0) -> Match:
        return Match(row, *self._rows[row], float(sim), photo)

    def best_in_class(self, queries: np.ndarray, class_id: str, k: int = 3) -> list[Match]:
        """The ``k`` sheets of ``class_id`` most similar to any of the query photos (exact scan).

        A sheet's similarity is its best over the photos, so a flower close-up and a leaf photo can each
        pull up the sheet that shows that organ best.
        """
        start, end = self.slices.get(str(class_id), (0, 0))
        if end <= start:
            return []
        q = np.atleast_2d(queries).astype(np.float32)
        sims = np.asarray(self.embeddings[start:end]) @ q.T  # [n_class, P]
        best, photo = sims.max(axis=1), sims.argmax(axis=1)
        top = np.argsort(-best, kind="stable")[:k]
        return [self._match(start + int(i), best[i], int(photo[i])) for i in top]

    def nearest(self, queries: np.ndarray, k: int = 5) -> list[Match]:
        """The ``k`` sheets of any species nearest to the photos (faiss; best over photos)."""
        sims, ids = search(self.index, queries, k)
        best: dict[int, tuple[float, int]] = {}
        for p in range(len(ids)):
            for s, i in zip(sims[p], ids[p], strict=True):
                if i >= 0 and (int(i) not in best or s > best[int(i)][0]):
                    best[int(i)] = (float(s), p)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        return [self._match(i, s, p) for i, (s, p) in ranked]
