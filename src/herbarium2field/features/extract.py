"""``h2f embed``: a frozen network (a timm backbone with pretrained weights, or a trained ``h2f train`` run) over
every dataset image, written to a resumable embedding cache (:mod:`herbarium2field.features.store`).

The cache records how the extractor was built (:mod:`herbarium2field.models.frozen`), so that photos embedded
later (identification with a classic run) go through the same weights, preprocessing and L2-normalisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from herbarium2field.data.loaders import image_source
from herbarium2field.data.manifest import read_dataset
from herbarium2field.errors import H2FError
from herbarium2field.features.store import CacheSpec, CacheWriter, images_sha256
from herbarium2field.hashing import file_sha256
from herbarium2field.models.extractor import default_device
from herbarium2field.models.frozen import ExtractorSpec, FrozenBackbone, build_frozen
from herbarium2field.models.inference import iter_table
from herbarium2field.progress import image_progress
from herbarium2field.run.card import read_card
from herbarium2field.run.load import load_model


def build_extractor(spec: ExtractorSpec, *, precision: str = "auto") -> FrozenBackbone:
    """The extractor of ``spec``: a frozen timm backbone, or the embedding of a trained run."""
    if spec.run is None:
        return build_frozen(spec, precision=precision)
    given = [n for n, v in (("--backbone", spec.backbone), ("--weights", spec.weights), ("--size", spec.size),
                            ("--mean", spec.mean), ("--std", spec.std)) if v]
    given += [n for n, v in (("--pretrained", spec.pretrained), ("--random-init", spec.random_init)) if v]
    if given:
        raise H2FError(f"{', '.join(given)} cannot be combined with --run: a run brings its own backbone, "
                       "weights and preprocessing")
    run = Path(spec.run).resolve()
    card = read_card(run)
    model = load_model(run, "torch", card=card, precision=precision, require_choice=False)
    ckpt = run / card.fingerprint.get("file", card.checkpoint)
    source = {"kind": "run", "run": str(run), "run_name": card.name, "checkpoint": str(ckpt)}
    return FrozenBackbone(model.extractor, str(card.model.get("backbone")), str(ckpt),  # type: ignore[arg-type]
                          card.fingerprint.get("sha256") or file_sha256(ckpt), source)


@dataclass
class EmbedReport:
    """What :func:`embed_dataset` did."""

    out: Path
    n_images: int
    dim: int
    embedded: int  # this call
    reused: int  # already in the cache
    failed: list[str]
    seconds: float  # embedding (loading + network) time of this call
    total_seconds: float  # including reading the dataset and building the network
    complete: bool
    extractor: FrozenBackbone

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def embed_dataset(
    data: str | Path,
    out: str | Path,
    spec: ExtractorSpec,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    shard_size: int = 1024,
    dtype: str = "float16",
    force: bool = False,
    max_images: int | None = None,
    precision: str = "auto",
    use_image_cache: bool = True,
    allow_missing: bool = False,
    progress: bool = False,
) -> EmbedReport:
    """Embed every image of the dataset at ``data`` (all splits) into the cache folder ``out``.

    Resumes an interrupted cache with the same spec; refuses a stale one unless ``force``. ``max_images``
    stops after the shard that reaches that many newly embedded images (the next call continues).
    """
    t0 = time.perf_counter()
    ds = read_dataset(data, check="exists", allow_missing=allow_missing)
    table = ds.table.reset_index(drop=True)
    paths = table.path.astype(str).tolist()
    ex = build_extractor(spec, precision=precision)
    cache_spec = CacheSpec(
        backbone=ex.backbone,
        weights=ex.weights,
        weights_sha256=ex.weights_sha256,
        preprocessing=ex.pre.to_dict(),
        dataset_root=str(Path(ds.root).resolve()),
        images_sha256=images_sha256(paths),
        n_images=len(paths),
        source=ex.source,
    )
    writer = CacheWriter.open(
        out,
        cache_spec,
        table,
        dict(ds.species),
        dtype=dtype,
        shard_size=shard_size,
        force=force,
        extra={"load_report": ex.load_summary, "dataset_layout": ds.layout},
    )
    pending = writer.pending()
    if max_images is not None:
        pending = _limit(writer, pending, max_images)
    rows = [r for k in pending for r in writer.rows_of(k)]
    reused = len(paths) - sum(len(writer.rows_of(k)) for k in writer.pending())
    source = image_source(ds, cache=use_image_cache, min_size=ex.pre.input_size)
    t_embed = time.perf_counter()
    done = 0
    if rows:
        buf: dict[int, np.ndarray] = {}
        shard_iter = iter(pending)
        current = next(shard_iter)
        with image_progress(len(rows), f"embedding with {ex.backbone}", show=progress) as advance:
            wanted = np.asarray(rows, dtype=np.int64)
            for b in iter_table(ex.extractor, table.iloc[wanted], source, batch_size=batch_size,
                                num_workers=num_workers):
                r = wanted[b.rows]
                for i, row in enumerate(r.tolist()):
                    buf[row] = b.embeddings[i]
                while current is not None and all(j in buf for j in writer.rows_of(current)):
                    rr = writer.rows_of(current)
                    writer.write_shard(current, np.stack([buf.pop(j) for j in rr]))
                    done += len(rr)
                    current = next(shard_iter, None)
                advance(len(r))
    seconds = time.perf_counter() - t_embed
    complete = not writer.pending()
    if complete:
        writer.finish(
            images_per_s=round(done / seconds, 2) if done and seconds > 0 else None,
            precision=precision,
            device=default_device().type,
        )
    return EmbedReport(
        Path(out),
        len(paths),
        int(writer.layout["dim"] or 0),
        done,
        reused,
        list(writer.meta.get("failed", [])),
        seconds,
        time.perf_counter() - t0,
        complete,
        ex,
    )


def _limit(writer: CacheWriter, pending: list[int], max_images: int) -> list[int]:
    if max_images < 1:
        raise H2FError(f"--limit must be at least 1 image, got {max_images}")
    kept, n = [], 0
    for k in pending:
        if n >= max_images:
            break
        kept.append(k)
        n += len(writer.rows_of(k))
    return kept
