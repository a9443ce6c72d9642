"""``h2f predict``: name every photo (or observation) of a collection and write the answers to one file.

The collection (:mod:`herbarium2field.data.collection`: a folder, a text list or a CSV whose column can
group several photos of one plant into an observation) goes through the run's model in batches, decoded by
worker processes, with a progress bar. Each observation gets the answer ``h2f identify`` gives it: top-k
species with scores, the genus, the confident flag, the answer level (species, genus or none) and the best
herbarium sheets of the top species (when the run has a gallery).

Outputs, by ``--format`` and the file's extension:

- ``table``: CSV (``.csv``) or Parquet (``.parquet``), one row per observation;
- ``plantclef``: the PlantCLEF run file, ``ObservationId;ClassId;Probability;Rank`` per line, the top-k
  species of every observation (:mod:`herbarium2field.data.runfile`).

Resumable: the observations are cut into chunks in a fixed order, and each chunk's rows are written to
``OUT.parts/`` as soon as it is done; batches never cross a chunk boundary, so a chunk computed after a
restart is the same, to the bit, as in an uninterrupted run. A killed ``h2f predict`` re-run with the same
arguments continues with the first missing chunk and ends with a byte-identical file. Files that are not
images, or that cannot be decoded, are listed in ``OUT.problems.csv`` (file, line, reason) and skipped;
they never stop the batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from herbarium2field.data.collection import Collection, read_collection
from herbarium2field.data.images import load_rgb
from herbarium2field.data.runfile import write_run_file
from herbarium2field.errors import H2FError, ImageError, Problem
from herbarium2field.identify.service import Identifier, photo_min_side
from herbarium2field.io import atomic_path, atomic_write_text, write_json
from herbarium2field.progress import image_progress
from herbarium2field.run.fingerprint import model_fingerprint
from herbarium2field.run.load import load_model
from herbarium2field.run.paths import RunPaths

FORMATS = ("table", "plantclef")
TABLE_SUFFIXES = (".csv", ".parquet")
PROBLEM_COLUMNS = ["file", "line", "kind", "reason"]
PARTS_FORMAT = 1


class PhotoFiles:
    """Opens photos by absolute path as RGB with short side ``size`` (picklable, for loader workers)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.root = Path("/")

    def load(self, path: str) -> Any:
        return load_rgb(path, min_side=self.size)


@dataclass
class PredictReport:
    out: Path
    problems_file: Path
    observations: int  # in the collection
    photos: int
    written: int  # observations answered (all chunks)
    predicted_now: int  # photos run through the model by this call
    resumed_chunks: int
    problems: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.predicted_now / self.seconds if self.seconds > 0 else 0.0


def output_format(out: Path, fmt: str | None) -> str:
    if fmt is not None and fmt not in FORMATS:
        raise H2FError(f"unknown --format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    if fmt == "plantclef":
        return fmt
    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise H2FError(f"cannot tell the output format from {out.name!r}", path=out,
                       hint="end the file in .csv or .parquet, or pass --format plantclef")
    return "table"


def chunks_of(collection: Collection, chunk_size: int) -> list[list[int]]:
    """Row positions of each chunk: whole observations, in collection order, about ``chunk_size`` photos each."""
    out: list[list[int]] = []
    current: list[int] = []
    for _, rows in collection.table.groupby("observation", sort=False).indices.items():
        if current and len(current) + len(rows) > chunk_size:
            out.append(current)
            current = []
        current += [int(r) for r in rows]
    if current:
        out.append(current)
    return out


def predict_collection(run: str | Path, source: str | Path, out: str | Path, *, fmt: str | None = None,
                       backend: str = "auto", top_k: int | None = None, sheets: int = 3, group_by: str | None = None,
                       combine: str = "probabilities", checklist: str | Path | None = None, batch_size: int = 32,
                       num_workers: int = 2, chunk_size: int = 1024, threads: int | None = None,
                       force: bool = False, progress: bool = True) -> PredictReport:
    """Answer every observation of the collection at ``source`` with the run (or bundle) ``run``."""
    start = time.perf_counter()
    out = Path(out)
    fmt = output_format(out, fmt)
    top_k = top_k or (30 if fmt == "plantclef" else 5)
    if top_k < 1 or sheets < 0 or chunk_size < 1 or batch_size < 1:
        raise H2FError("--top-k, --chunk-size and --batch-size must be >= 1, --sheets >= 0")
    collection = read_collection(source, group_by=group_by)
    if collection.table.empty:
        raise H2FError("no photos to name here", path=source,
                       hint="a folder of images, a list of paths or a CSV with a path column")
    model = load_model(run, backend, threads=threads)
    ident = Identifier(model.run, model=model, gallery=RunPaths(model.run).gallery.is_dir(), checklist=checklist)
    chunks = chunks_of(collection, chunk_size)
    options = {"format": fmt, "top_k": top_k, "sheets": sheets, "combine": combine, "chunk_size": chunk_size,
               "batch_size": batch_size, "checklist": str(checklist) if checklist else None, "backend": model.backend}
    parts = _parts(out, _fingerprint(collection), model_fingerprint(model.card, model.run), options, force)
    pending = [k for k in range(len(chunks)) if not (parts / f"chunk-{k:05d}.parquet").is_file()]
    photos = PhotoFiles(photo_min_side(model.pre.input_size))
    table = collection.table
    done_now = 0
    if pending:
        rows = [r for k in pending for r in chunks[k]]
        sub = table.iloc[rows].reset_index(drop=True)
        position, batches = 0, []
        for k in pending:
            n = len(chunks[k])
            batches += [list(range(position + i, position + min(i + batch_size, n))) for i in range(0, n, batch_size)]
            position += n
        ends = np.cumsum([len(chunks[k]) for k in pending])
        emb = np.zeros((len(sub), model.extractor.dim), np.float32)
        scores = np.zeros((len(sub), model.card.num_classes), np.float32)
        branch = np.zeros((len(sub), model.extractor.dim), np.float32) if model.reserve else None
        seen = 0
        next_chunk = 0
        with image_progress(len(sub), f"predicting with {model.card.name}", show=progress) as advance:
            for b in model.iter_table(sub, photos, batches=batches, num_workers=num_workers):
                emb[b.rows], scores[b.rows] = b.embeddings, b.scores
                if branch is not None and b.branch is not None:
                    branch[b.rows] = b.branch
                seen += len(b.rows)
                advance(len(b.rows))
                while next_chunk < len(pending) and seen >= ends[next_chunk]:
                    lo = 0 if next_chunk == 0 else int(ends[next_chunk - 1])
                    hi = int(ends[next_chunk])
                    _write_chunk(parts, pending[next_chunk], sub.iloc[lo:hi], emb[lo:hi], scores[lo:hi], ident,
                                 fmt=fmt, top_k=top_k, sheets=sheets, combine=combine, photos=photos,
                                 root=collection.root, branch=None if branch is None else branch[lo:hi])
                    next_chunk += 1
        done_now = len(sub)
    frames = [pd.read_parquet(parts / f"chunk-{k:05d}.parquet") for k in range(len(chunks))]
    answers = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    problems = _problems(collection.problems, parts, len(chunks))
    problems_file = out.with_name(out.name + ".problems.csv")
    atomic_write_text(problems_file, problems.to_csv(index=False))
    _write_output(answers, out, fmt)
    shutil.rmtree(parts, ignore_errors=True)
    n_obs = len(collection.observations)
    return PredictReport(out, problems_file, n_obs, len(table), len(answers) if fmt == "table"
                         else answers.observation.nunique() if len(answers) else 0, done_now,
                         len(chunks) - len(pending), len(problems), time.perf_counter() - start)


# ---- one chunk --------------------------------------------------------------------------------------------


def _write_chunk(parts: Path, k: int, rows: pd.DataFrame, emb: np.ndarray, scores: np.ndarray, ident: Identifier,
                 *, fmt: str, top_k: int, sheets: int, combine: str, photos: PhotoFiles, root: Path,
                 branch: np.ndarray | None = None) -> None:
    """Answer the observations of one chunk and write its rows (and its problems) atomically."""
    ok = ~np.isnan(emb).any(axis=1)
    problems = [{"file": p, "line": _line(ln), "kind": "unreadable", "reason": _reason(p, photos)}
                for p, ln in zip(rows.path[~ok], rows.line[~ok], strict=True)]
    records = []
    for obs, idx in rows.groupby("observation", sort=False).indices.items():
        good = idx[ok[idx]]
        if len(good) == 0:
            if len(idx) > 1:  # a single photo is already listed as unreadable
                problems.append({"file": ";".join(rows.path.iloc[idx]), "line": None, "kind": "no-readable-photo",
                                 "reason": f"observation {obs}: none of its {len(idx)} photos could be read"})
            continue
        ans = ident.answer(emb[good], scores[good], top_k=top_k, sheets=sheets if fmt == "table" else 0, nearest=0,
                           method=combine, branch=None if branch is None else branch[good])
        records += _rows(obs, [_shown(p, root) for p in rows.path.iloc[good]], ans, fmt)
    frame = pd.DataFrame.from_records(records)
    with atomic_path(parts / f"chunk-{k:05d}.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    atomic_write_text(parts / f"problems-{k:05d}.csv", pd.DataFrame(problems, columns=PROBLEM_COLUMNS)
                      .to_csv(index=False))


def _rows(obs: str, paths: list[str], ans: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    if fmt == "plantclef":
        return [{"observation": obs, "class_id": r["class_id"], "probability": r["score"], "rank": r["rank"]}
                for r in ans["results"]]
    g, a = ans["genus"], ans["answer"]
    row: dict[str, Any] = {
        "observation": obs, "photos": len(paths), "files": ";".join(paths),
        "answer_level": a["level"], "answer": a["name"] or "", "confident": ans["confident"],
        "genus": g["name"], "genus_score": g["score"], "genus_confident": g["confident"], "family": g["family"] or "",
    }
    for r in ans["results"]:
        i = r["rank"]
        row.update({f"species{i}_class_id": r["class_id"], f"species{i}": r["species"], f"score{i}": r["score"]})
    top = ans["results"][0]["herbarium"]
    row["herbarium_sheets"] = ";".join(s["id"] for s in top)
    row["herbarium_similarity"] = ";".join(f"{s['similarity']:.4f}" for s in top)
    return [row]


def _shown(path: str, root: Path) -> str:
    """A photo's path as the output shows it: relative to the collection's folder when inside it."""
    p, r = Path(path), Path(root).resolve()
    return p.relative_to(r).as_posix() if p.is_relative_to(r) else str(p)


def _line(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _reason(path: str, photos: PhotoFiles) -> str:
    try:
        photos.load(path)
    except ImageError as exc:
        return exc.message
    except MemoryError:
        return "too large to decode"
    return "unreadable in a loader worker"


# ---- the parts folder and the final file --------------------------------------------------------------------


def _fingerprint(collection: Collection) -> str:
    h = hashlib.sha256()
    for p, obs in zip(collection.table.path, collection.table.observation, strict=True):
        st = os.stat(p)
        h.update(f"{p}\t{obs}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _parts(out: Path, data: str, model: dict[str, Any], options: dict[str, Any], force: bool) -> Path:
    """``OUT.parts/``: continued when it was made by the same model, input and options; else refused."""
    parts = out.with_name(out.name + ".parts")
    meta = {"format": PARTS_FORMAT, "data": data, "model": model, "options": options}
    if parts.is_dir():
        try:
            old = json.loads((parts / "meta.json").read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(meta)):
            if not force:
                raise H2FError("an unfinished prediction with another model, input or options is here", path=parts,
                               hint="re-run with the same arguments to continue it, or pass --force to start again")
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    write_json(parts / "meta.json", meta)
    return parts


def _problems(listed: list[Problem], parts: Path, n_chunks: int) -> pd.DataFrame:
    frames = [pd.DataFrame([{"file": p.path, "line": p.line, "kind": p.kind, "reason": p.message} for p in listed],
                           columns=PROBLEM_COLUMNS)]
    for k in range(n_chunks):
        f = parts / f"problems-{k:05d}.csv"
        if f.is_file() and f.stat().st_size:
            frames.append(pd.read_csv(f, dtype={"file": str, "kind": str, "reason": str}))
    out = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    out["line"] = out["line"].astype("Int64")
    return out


def _write_output(answers: pd.DataFrame, out: Path, fmt: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "plantclef":
        write_run_file(out, answers)
    elif out.suffix.lower() == ".parquet":
        with atomic_path(out) as tmp:
            answers.to_parquet(tmp, index=False)
    else:
        atomic_write_text(out, answers.to_csv(index=False, float_format="%.6g"))
