"""Frozen-feature extraction: any timm backbone (or a trained ``h2f train`` run) over every dataset image,
written to a resumable embedding cache (:mod:`herbarium2field.features.store`).

The extractor is rebuilt from what the cache records (:func:`extractor_from_spec`), so that photos
embedded later (identification) go through the same weights, preprocessing and L2-normalisation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from herbarium2field.data.cache import ImageSource
from herbarium2field.data.datamodule import image_source
from herbarium2field.data.manifest import read_dataset
from herbarium2field.data.transforms import eval_transform
from herbarium2field.errors import H2FError
from herbarium2field.features.store import CacheSpec, CacheWriter, images_sha256
from herbarium2field.hashing import file_sha256
from herbarium2field.models.backbones import Preprocessing, create_backbone, preprocessing_for
from herbarium2field.models.predict import default_device, embed_batch, table_batches
from herbarium2field.progress import image_progress

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ExtractorSpec:
    """How to build the feature extractor: a timm backbone (+ weights) or a trained run."""

    backbone: str | None = None
    weights: str | None = None  # a local file or "efficientnet_lite0:offline"
    pretrained: bool = False  # timm/Hugging Face hub weights (needs internet)
    size: int | None = None  # input size; default: the backbone's pretrained_cfg
    mean: tuple[float, float, float] | None = None  # override the normalisation (default: pretrained_cfg)
    std: tuple[float, float, float] | None = None
    run: str | Path | None = None  # an `h2f train` run folder instead of a backbone
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model


@dataclass
class Extractor:
    """A ready feature extractor and the identity that the cache records."""

    net: nn.Module
    pre: Preprocessing
    backbone: str
    weights: str
    weights_sha256: str | None
    source: dict[str, Any]
    load_summary: str | None = None
    load_warnings: list[str] = field(default_factory=list)


# ---- building ----------------------------------------------------------------------------------------


def build_extractor(spec: ExtractorSpec) -> Extractor:
    """The frozen network (eval mode, on CPU) and its preprocessing; H2FError for inconsistent options."""
    if spec.run is not None:
        return _from_run(spec)
    if not spec.backbone:
        raise H2FError("say which network embeds the images: --backbone NAME (timm) or --run runs/NAME")
    if spec.size is not None and not 16 <= spec.size <= 4096:
        raise H2FError(f"--size must be in 16..4096 px, got {spec.size}")
    torch.manual_seed(0)  # a randomly initialised backbone is then the same every time
    net, report = create_backbone(
        spec.backbone, pretrained=spec.pretrained, weights=spec.weights, global_pool=None, **spec.timm_kwargs
    )
    if spec.size is not None:
        _resize_vit(net, spec.size, spec.backbone)
    pre = preprocessing_for(net, weights=spec.weights, image_size=spec.size)
    if spec.mean is not None:
        pre.mean = tuple(float(x) for x in spec.mean)  # type: ignore[assignment]
    if spec.std is not None:
        pre.std = tuple(float(x) for x in spec.std)  # type: ignore[assignment]
    warnings = []
    if report is not None and report.missing:
        warnings.append(
            f"{len(report.missing)} backbone tensors were not in the weights file and keep their "
            f"random initialisation: {', '.join(report.missing[:5])}"
        )
    weights = spec.weights or ("timm hub" if spec.pretrained else "random init")
    source = {"kind": "backbone", "pretrained": bool(spec.pretrained), "timm_kwargs": dict(spec.timm_kwargs)}
    return Extractor(
        net.eval(),
        pre,
        spec.backbone,
        weights,
        report.sha256 if report else None,
        source,
        report.summary() if report else None,
        warnings,
    )


def _resize_vit(net: nn.Module, size: int, name: str) -> None:
    """Vision transformers have position embeddings for one input size: resample them to ``size``.

    Done *after* loading the weights, so the checkpoint's embeddings (e.g. DINOv2's 37x37 grid at 518 px)
    load with their own shape and are then interpolated (timm's ``set_input_size``). CNNs take any size.
    """
    patch_embed = getattr(net, "patch_embed", None)
    if patch_embed is None or not hasattr(net, "set_input_size"):
        return
    patch = getattr(patch_embed, "patch_size", None)
    if patch is not None and size % int(patch[0]):
        raise H2FError(
            f"--size {size} is not a multiple of {name}'s patch size {int(patch[0])}",
            hint=f"use e.g. {size - size % int(patch[0])} or {size + int(patch[0]) - size % int(patch[0])}",
        )
    if tuple(getattr(patch_embed, "img_size", ())) != (size, size):
        net.set_input_size(img_size=(size, size))


def _from_run(spec: ExtractorSpec) -> Extractor:
    from herbarium2field.training.run_dir import checkpoint_path, load_network

    given = [
        n
        for n, v in (
            ("--backbone", spec.backbone),
            ("--weights", spec.weights),
            ("--size", spec.size),
            ("--mean", spec.mean),
            ("--std", spec.std),
        )
        if v
    ] + (["--pretrained"] if spec.pretrained else [])
    if given:
        raise H2FError(
            f"{', '.join(given)} cannot be combined with --run: a run brings its own backbone, "
            "weights and preprocessing"
        )
    run = Path(spec.run).resolve()  # type: ignore[arg-type]
    net, card, _cfg = load_network(run)
    ckpt = checkpoint_path(run, card)
    source = {"kind": "run", "run": str(run), "run_name": card.name, "checkpoint": str(ckpt)}
    return Extractor(
        net.eval(),
        Preprocessing.from_dict(card.preprocessing),
        str(card.model.get("backbone")),
        str(ckpt),
        file_sha256(ckpt),
        source,
    )


def spec_from_record(
    backbone: str, weights: str, preprocessing: dict[str, Any], source: dict[str, Any]
) -> ExtractorSpec:
    """The :class:`ExtractorSpec` that rebuilds an extractor recorded in a cache or a model card."""
    if source.get("kind") == "run":
        return ExtractorSpec(run=source["run"])
    pre = Preprocessing.from_dict(preprocessing)
    file_weights = None if weights in ("timm hub", "random init") else weights
    return ExtractorSpec(
        backbone=backbone,
        weights=file_weights,
        pretrained=bool(source.get("pretrained")),
        size=pre.input_size,
        mean=pre.mean,
        std=pre.std,
        timm_kwargs=dict(source.get("timm_kwargs") or {}),
    )


def extractor_from_spec(spec: CacheSpec | dict[str, Any]) -> Extractor:
    """Rebuild the extractor a cache was made with, checking that the weights are the same file."""
    s = spec if isinstance(spec, CacheSpec) else CacheSpec(**spec)
    ex = build_extractor(spec_from_record(s.backbone, s.weights, s.preprocessing, s.source))
    if s.weights_sha256 and ex.weights_sha256 != s.weights_sha256:
        raise H2FError(
            f"the weights file changed since the embeddings were made (sha256 {s.weights_sha256[:12]}… "
            f"recorded, {str(ex.weights_sha256)[:12]}… now)",
            path=ex.weights,
            hint="restore the original file, or re-embed (`h2f embed ... --force`) and refit",
        )
    ex.pre = Preprocessing.from_dict(s.preprocessing)  # the recorded preprocessing is authoritative
    return ex


# ---- embedding ---------------------------------------------------------------------------------------


def _device_setup(net: nn.Module, precision: str) -> tuple[nn.Module, torch.device, torch.dtype | None]:
    if precision not in PRECISIONS:
        raise H2FError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    device = default_device()
    amp = torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None
    net = net.to(device).eval()
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net, device, amp


@torch.inference_mode()
def embed_rows(
    net: nn.Module,
    pre: Preprocessing,
    source: ImageSource,
    table: pd.DataFrame,
    rows: list[int],
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    precision: str = "auto",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(rows, embeddings)`` for ``table.iloc[rows]`` batch by batch, in order; failed images give NaN
    rows (never another image's embedding)."""
    net, device, amp = _device_setup(net, precision)
    wanted = np.asarray(rows, dtype=np.int64)
    for x, pos in table_batches(
        table.iloc[wanted], source, eval_transform(pre), batch_size=batch_size, num_workers=num_workers
    ):
        ok = (pos >= 0).numpy()
        r = wanted[np.where(ok, pos.numpy(), -pos.numpy() - 1)]
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            e = embed_batch(net, x).cpu().numpy()
        e[~ok] = np.nan
        yield r, e


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
    extractor: Extractor

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
    ex = build_extractor(spec)
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
            for r, e in embed_rows(
                ex.net,
                ex.pre,
                source,
                table,
                rows,
                batch_size=batch_size,
                num_workers=num_workers,
                precision=precision,
            ):
                for i, row in enumerate(r.tolist()):
                    buf[row] = e[i]
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
