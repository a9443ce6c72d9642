"""``h2f export``: the run's model as one ONNX graph for ONNX Runtime, and deployable bundles.

``--format onnx`` writes ``runs/<name>/export/model.onnx`` with ``export/meta.json`` (the model fingerprint it
was made from, opset, input/output names, preprocessing, class ids). Input ``images`` is a float32 batch
``[N, 3, S, S]`` already normalised (the timm eval transform); the batch dimension is dynamic. Outputs:
``embeddings`` [N, D] (L2-normalised) and ``scores`` [N, C] (the head's logits) for a network; a classic
run exports its frozen network (``embeddings`` only) and keeps its fitted classifier in ``model.joblib``.

``--format bundle OUT`` writes everything identification needs and nothing else — the ONNX model, the card,
the inference choice, class means (prototypes), the calibration, the herbarium gallery with its thumbnails
(and ``model.joblib`` for a classic run) — as a folder, or an archive when OUT ends in ``.tar.gz``/``.tgz``/
``.zip``. ``h2f serve OUT`` and ``h2f identify OUT photo.jpg`` then run on a machine that has neither the
training data nor the PyTorch checkpoint.

We use the TorchScript-based exporter (``dynamo=False``): with torch 2.14 it exports timm's ConvNeXt V2,
EfficientNet and MobileNet models and our heads as they are, without the extra ``onnxscript`` package
the dynamo exporter needs. Its deprecation warning is silenced here.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from herbarium2field.data.transforms import Preprocessing
from herbarium2field.errors import H2FError
from herbarium2field.hashing import file_sha256
from herbarium2field.io import atomic_path, write_json
from herbarium2field.models.extractor import OnnxExtractor, TorchExtractor, pooled
from herbarium2field.retrieval.gallery import Gallery
from herbarium2field.run.bundle import is_archive
from herbarium2field.run.card import ModelCard, outdated, package_version, read_card
from herbarium2field.run.finalize import is_current
from herbarium2field.run.fingerprint import model_fingerprint, same_model
from herbarium2field.run.load import load_model
from herbarium2field.run.paths import RunPaths

OPSET = 17
FORMAT_VERSION = 2
BUNDLE_FORMAT = 1
FORMATS = ("onnx", "bundle")


@dataclass
class ExportReport:
    path: Path
    seconds: float
    max_abs_diff_embeddings: float
    max_abs_diff_scores: float
    min_cosine: float
    same_top5: bool
    up_to_date: bool = False


class _NetworkGraph(nn.Module):
    """``images -> (L2-normalised embeddings, head logits)`` of an H2FNet."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.net.embed(x)
        return F.normalize(emb.float(), dim=1), self.net.head.logits(emb).float()


class _BackboneGraph(nn.Module):
    """``images -> L2-normalised embeddings`` of a classic run's frozen network, made as its feature cache
    was (:func:`~herbarium2field.models.extractor.pooled`: pooled timm features, or an H2FNet's embedding)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(pooled(self.backbone, x).float(), dim=1)


def export_module(module: nn.Module, example: Tensor, path: Path, output_names: list[str]) -> None:
    """Export ``module`` (eval mode) to ``path`` with a dynamic batch dimension, atomically."""
    module = module.eval()
    dynamic = {"images": {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation, tracer warnings
        torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["images"],
                          output_names=output_names, dynamic_axes=dynamic, do_constant_folding=True)
        onnx.checker.check_model(str(tmp))


def export_onnx(run: str | Path, *, force: bool = False, check_batch: int = 3) -> ExportReport:
    """Export a run's model; skip when ``export/`` already matches the model (unless ``force``).

    The export is checked against eager PyTorch on ``check_batch`` random inputs: max absolute
    difference of embeddings and scores, minimum cosine of embeddings, same top-5 classes.
    """
    paths = RunPaths(Path(run))
    card = read_card(paths.root)
    if not force and paths.onnx.is_file() and paths.onnx_meta.is_file():
        meta = _read_meta(paths.onnx_meta)
        if meta.get("format") == FORMAT_VERSION and same_model(meta.get("model"), card):
            c = meta.get("check", {})
            return ExportReport(paths.onnx, 0.0, c.get("max_abs_diff_embeddings", float("nan")),
                                c.get("max_abs_diff_scores", float("nan")), c.get("min_cosine", float("nan")),
                                bool(c.get("same_top5")), up_to_date=True)
    start = time.perf_counter()
    module, outputs, pre = _graph(paths.root, card)
    size = int(pre["input_size"])
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    export_module(module, example, paths.onnx, outputs)
    check = compare_with_eager(module, paths.onnx, pre, batch=check_batch)
    write_json(paths.onnx_meta, {
        "format": FORMAT_VERSION, "model": model_fingerprint(card, paths.root), "opset": OPSET, "kind": card.kind,
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32"},
        "outputs": outputs, "preprocessing": pre, "class_ids": card.class_ids, "torch": torch.__version__,
        "exporter": "torch.onnx.export(dynamo=False)", "check": check,
    })
    return ExportReport(paths.onnx, time.perf_counter() - start, check["max_abs_diff_embeddings"],
                        check["max_abs_diff_scores"], check["min_cosine"], check["same_top5"])


def _graph(run: Path, card: ModelCard) -> tuple[nn.Module, list[str], dict[str, Any]]:
    model = load_model(run, "torch", card=card, require_choice=False)
    ex = model.extractor
    assert isinstance(ex, TorchExtractor)
    pre = ex.pre.to_dict()
    if card.kind == "network":
        return _NetworkGraph(ex.net), ["embeddings", "scores"], pre
    return _BackboneGraph(ex.net), ["embeddings"], pre


@torch.inference_mode()
def compare_with_eager(module: nn.Module, onnx_path: Path, pre: dict[str, Any], *, batch: int = 3) -> dict[str, Any]:
    """Run the eager module and the ONNX graph on the same random batch and measure the differences."""
    size = int(pre["input_size"])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    eager = module.eval()(x)
    eager = [t.numpy() for t in (eager if isinstance(eager, tuple) else (eager,))]
    session = OnnxExtractor.from_file(onnx_path, Preprocessing.from_dict(pre)).session
    onnx_out = session.run(None, {"images": x.numpy()})
    e_ref, e_onnx = eager[0], onnx_out[0]
    cos = np.sum(_unit(e_ref) * _unit(e_onnx), axis=1)
    out: dict[str, Any] = {"batch": batch, "max_abs_diff_embeddings": float(np.abs(e_ref - e_onnx).max()),
                           "min_cosine": float(cos.min()), "max_abs_diff_scores": 0.0, "same_top5": True}
    if len(eager) > 1:
        s_ref, s_onnx = eager[1], onnx_out[1]
        k = min(5, s_ref.shape[1])
        out["max_abs_diff_scores"] = float(np.abs(s_ref - s_onnx).max())
        out["same_top5"] = bool((np.argsort(-s_ref, axis=1)[:, :k] == np.argsort(-s_onnx, axis=1)[:, :k]).all())
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# ---- deployable bundles -----------------------------------------------------------------------------------


@dataclass
class BundleReport:
    path: Path
    files: int
    bytes: int
    seconds: float
    onnx: ExportReport


def export_bundle(run: str | Path, out: str | Path, *, force: bool = False) -> BundleReport:
    """Write the run's deployable bundle to ``out`` (a folder, or an archive by its suffix)."""
    start = time.perf_counter()
    src = RunPaths(Path(run))
    out = Path(out)
    card = read_card(src.root)
    if src.is_bundle:
        raise H2FError("this is already a bundle", path=src.root)
    if not is_current(src.root, card):
        raise outdated(src.root, "prototypes, inference choice or calibration")
    gallery = Gallery.load(src.root)  # refuses a missing or damaged gallery, naming `h2f index`
    gallery.check_model(src.root, card)
    gallery.close()
    if out.exists() and not force:
        raise H2FError("the output already exists", path=out, hint="choose another path or pass --force")
    report = export_onnx(src.root)
    with tempfile.TemporaryDirectory(prefix=".h2f-bundle-", dir=out.parent if out.parent.exists() else None) as tmp:
        folder = Path(tmp) / (out.name.split(".")[0] if is_archive(out) else out.name)
        dst = RunPaths(folder)
        files = [src.card, src.environment, src.inference, src.prototypes, src.validation, src.calibration, src.split,
                 src.onnx, src.onnx_meta, *sorted(src.root.glob(src.branch("*").name))]
        files += [src.classifier] if card.kind == "classic" else []
        for f in files:
            if f.is_file():
                target = dst.root / f.relative_to(src.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
        shutil.copytree(src.gallery, dst.gallery)
        contents = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        write_json(dst.bundle_marker, {
            "format": BUNDLE_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "from_run": str(src.root.resolve()), "h2f_version": package_version("herbarium2field"),
            "model": model_fingerprint(card, src.root), "backend": "onnx",
            "files": {name: file_sha256(folder / name) for name in contents},
        })
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        if is_archive(out):
            _archive(folder, out)
        else:
            os.replace(folder, out)
    size = out.stat().st_size if out.is_file() else sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return BundleReport(out, len(contents) + 1, size, time.perf_counter() - start, report)


def _archive(folder: Path, out: Path) -> None:
    """``folder`` as one archive at ``out`` (written beside it and renamed, so it is never half there)."""
    with atomic_path(out) as tmp:
        if out.name.endswith(".zip"):
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for p in sorted(folder.rglob("*")):
                    if p.is_file():
                        z.write(p, f"{folder.name}/{p.relative_to(folder).as_posix()}")
        else:
            mode = "w" if out.name.endswith(".tar") else "w:gz"
            with tarfile.open(tmp, mode) as t:
                t.add(folder, arcname=folder.name)
