"""Frozen pretrained backbones for feature extraction (``h2f embed``, classic runs): a timm model by name with
weights from a local file or the hub, and the identity (weights hash, preprocessing) a feature cache records.

The extractor is rebuilt from that record (:func:`spec_from_record`), so photos embedded later (identification)
go through the same weights, preprocessing and L2-normalisation as the cached features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from herbarium2field.data.transforms import Preprocessing
from herbarium2field.errors import H2FError
from herbarium2field.models.backbones import create_backbone, preprocessing_for
from herbarium2field.models.extractor import TorchExtractor

#: What a cache or card records as the weights of a backbone that was not loaded from a file.
HUB, RANDOM = "timm hub", "random init"


@dataclass
class ExtractorSpec:
    """How to build a feature extractor: a timm backbone (+ weights), or a trained ``h2f train`` run."""

    backbone: str | None = None
    weights: str | None = None  # a local file or "efficientnet_lite0:offline"
    pretrained: bool = False  # timm/Hugging Face hub weights (needs internet)
    random_init: bool = False  # embed with random weights on purpose (a control, never a baseline)
    grey: bool = False  # colour-invariant input (greyscale images)
    size: int | None = None  # input size; default: the backbone's pretrained_cfg
    mean: tuple[float, float, float] | None = None  # override the normalisation (default: pretrained_cfg)
    std: tuple[float, float, float] | None = None
    run: str | Path | None = None  # an `h2f train` run folder instead of a backbone
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model


@dataclass
class FrozenBackbone:
    """A ready extractor and the identity that a feature cache records."""

    extractor: TorchExtractor
    backbone: str
    weights: str
    weights_sha256: str | None
    source: dict[str, Any]
    load_summary: str | None = None
    load_warnings: list[str] = field(default_factory=list)

    @property
    def pre(self) -> Preprocessing:
        return self.extractor.pre


def build_frozen(spec: ExtractorSpec, *, precision: str = "auto") -> FrozenBackbone:
    """The frozen timm network (eval mode) and its preprocessing; H2FError for inconsistent options.

    Weights must be named (a file, ``efficientnet_lite0:offline``, or ``pretrained`` from the hub): features
    of a randomly initialised network are noise, so that needs ``random_init`` on purpose.
    """
    if spec.run is not None:
        raise H2FError("a run's network is loaded through the run directory, not as a backbone")
    if not spec.backbone:
        raise H2FError("say which network embeds the images: --backbone NAME (timm) or --run runs/NAME")
    if not (spec.weights or spec.pretrained or spec.random_init):
        raise H2FError(
            f"no weights for {spec.backbone!r}: its features would come from a randomly initialised network",
            hint="pass --weights FILE (or efficientnet_lite0:offline), --pretrained for the timm hub, or "
            "--random-init if random features are really what you want")
    if spec.random_init and (spec.weights or spec.pretrained):
        raise H2FError("--random-init cannot be combined with --weights or --pretrained")
    if spec.size is not None and not 16 <= spec.size <= 4096:
        raise H2FError(f"--size must be in 16..4096 px, got {spec.size}")
    torch.manual_seed(0)  # a randomly initialised backbone is then the same every time
    net, report = create_backbone(spec.backbone, pretrained=spec.pretrained, weights=spec.weights,
                                  global_pool=None, **spec.timm_kwargs)
    if spec.size is not None:
        _resize_vit(net, spec.size, spec.backbone)
    pre = preprocessing_for(net, weights=spec.weights, image_size=spec.size)
    if spec.mean is not None:
        pre.mean = tuple(float(x) for x in spec.mean)  # type: ignore[assignment]
    if spec.std is not None:
        pre.std = tuple(float(x) for x in spec.std)  # type: ignore[assignment]
    pre.grey = spec.grey
    warnings = []
    if report is not None and report.missing:
        warnings.append(f"{len(report.missing)} backbone tensors were not in the weights file and keep their "
                        f"random initialisation: {', '.join(report.missing[:5])}")
    weights = spec.weights or (HUB if spec.pretrained else RANDOM)
    source = {"kind": "backbone", "pretrained": bool(spec.pretrained), "timm_kwargs": dict(spec.timm_kwargs)}
    return FrozenBackbone(TorchExtractor(net.eval(), pre, precision=precision), spec.backbone, weights,
                          report.sha256 if report else None, source, report.summary() if report else None,
                          warnings)


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


def spec_from_record(backbone: str, weights: str, preprocessing: dict[str, Any],
                     source: dict[str, Any]) -> ExtractorSpec:
    """The :class:`ExtractorSpec` that rebuilds an extractor recorded in a cache or a model card."""
    if source.get("kind") == "run":
        return ExtractorSpec(run=source["run"])
    pre = Preprocessing.from_dict(preprocessing)
    return ExtractorSpec(
        backbone=backbone,
        weights=None if weights in (HUB, RANDOM) else weights,
        pretrained=bool(source.get("pretrained")),
        random_init=weights == RANDOM,
        size=pre.input_size,
        mean=pre.mean,
        std=pre.std,
        grey=pre.grey,
        timm_kwargs=dict(source.get("timm_kwargs") or {}),
    )


def frozen_from_record(record: dict[str, Any], *, precision: str = "auto") -> FrozenBackbone:
    """Rebuild the backbone a cache was made with (``record``: its spec), checking the weights are the same file."""
    spec = spec_from_record(record["backbone"], record["weights"], record["preprocessing"],
                            record.get("source") or {"kind": "backbone"})
    fb = build_frozen(spec, precision=precision)
    recorded = record.get("weights_sha256")
    if recorded and fb.weights_sha256 != recorded:
        raise H2FError(
            f"the weights file changed since the embeddings were made (sha256 {recorded[:12]}… "
            f"recorded, {str(fb.weights_sha256)[:12]}… now)",
            path=fb.weights,
            hint="restore the original file, or re-embed (`h2f embed ... --force`) and refit",
        )
    fb.extractor.pre = Preprocessing.from_dict(record["preprocessing"])  # the recorded one is authoritative
    return fb
