"""``h2f export RUN --format onnx``: the embedding + scores network as one ONNX graph, for ONNX Runtime.

Written to ``runs/<name>/export/model.onnx`` with ``export/meta.json`` (the model fingerprint it was
made from, opset, input/output names, preprocessing, class ids). Input ``images`` is a float32 batch
``[N, 3, S, S]`` already normalised (the timm eval transform); the batch dimension is dynamic. Outputs:
``embeddings`` [N, D] (L2-normalised) and ``scores`` [N, C] (the head's logits) for a network; a classic
run exports its frozen network (``embeddings`` only) and keeps its fitted classifier in Python.

We use the TorchScript-based exporter (``dynamo=False``): with torch 2.14 it exports timm's ConvNeXt V2,
EfficientNet and MobileNet models and our heads as they are, without the extra ``onnxscript`` package
the dynamo exporter needs. Its deprecation warning is silenced here.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from herbarium2field.errors import H2FError
from herbarium2field.io import atomic_path, write_json
from herbarium2field.retrieval.freshness import model_fingerprint, same_model
from herbarium2field.training.run_dir import ModelCard, RunPaths

OPSET = 17
EXPORT_DIR = "export"
FORMAT_VERSION = 1


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
    was (``models.predict.embed_batch``: pooled timm features, or an H2FNet's embedding)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        from herbarium2field.models.predict import embed_batch

        return embed_batch(self.backbone, x)


def export_paths(run: Path) -> tuple[Path, Path]:
    folder = Path(run) / EXPORT_DIR
    return folder / "model.onnx", folder / "meta.json"


def export_module(module: nn.Module, example: Tensor, path: Path, output_names: list[str]) -> None:
    """Export ``module`` (eval mode) to ``path`` with a dynamic batch dimension, atomically."""
    module = module.eval()
    dynamic = {"images": {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation, tracer warnings
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=output_names,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
        import onnx

        onnx.checker.check_model(str(tmp))


def export_onnx(run: str | Path, *, force: bool = False, check_batch: int = 3) -> ExportReport:
    """Export a run's model; skip when ``export/`` already matches the checkpoint (unless ``force``).

    The export is checked against eager PyTorch on ``check_batch`` random inputs: max absolute
    difference of embeddings and scores, minimum cosine of embeddings, same top-5 classes.
    """
    import time

    run = Path(run)
    card = ModelCard.load(RunPaths(run).card)
    onnx_path, meta_path = export_paths(run)
    if not force and onnx_path.is_file() and meta_path.is_file():
        meta = _read_meta(meta_path)
        if meta.get("format") == FORMAT_VERSION and same_model(meta.get("model"), run, card):
            c = meta.get("check", {})
            return ExportReport(
                onnx_path,
                0.0,
                c.get("max_abs_diff_embeddings", float("nan")),
                c.get("max_abs_diff_scores", float("nan")),
                c.get("min_cosine", float("nan")),
                bool(c.get("same_top5")),
                up_to_date=True,
            )
    start = time.perf_counter()
    module, outputs, pre = _graph(run, card)
    size = int(pre["input_size"])
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    export_module(module, example, onnx_path, outputs)
    check = compare_with_eager(module, onnx_path, size, batch=check_batch)
    seconds = time.perf_counter() - start
    write_json(
        meta_path,
        {
            "format": FORMAT_VERSION,
            "model": model_fingerprint(run, card),
            "opset": OPSET,
            "kind": card.kind,
            "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32"},
            "outputs": outputs,
            "preprocessing": pre,
            "class_ids": card.class_ids,
            "torch": torch.__version__,
            "exporter": "torch.onnx.export(dynamo=False)",
            "check": check,
        },
    )
    return ExportReport(
        onnx_path,
        seconds,
        check["max_abs_diff_embeddings"],
        check["max_abs_diff_scores"],
        check["min_cosine"],
        check["same_top5"],
    )


def _graph(run: Path, card: ModelCard) -> tuple[nn.Module, list[str], dict[str, Any]]:
    if card.kind == "network":
        from herbarium2field.training.run_dir import load_network

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net, card, _ = load_network(run)
        return _NetworkGraph(net), ["embeddings", "scores"], card.preprocessing
    if card.kind == "classic":
        from herbarium2field.identify.predictor import _load_classic

        backbone, pre = _load_classic(run).backbone()
        return (
            _BackboneGraph(backbone),
            ["embeddings"],
            (pre.to_dict() if pre is not None else card.preprocessing),
        )
    raise H2FError(f"unknown model kind {card.kind!r}", path=RunPaths(run).card)


@torch.inference_mode()
def compare_with_eager(module: nn.Module, onnx_path: Path, size: int, *, batch: int = 3) -> dict[str, Any]:
    """Run the eager module and the ONNX graph on the same random batch and measure the differences."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    eager = module.eval()(x)
    eager = [t.numpy() for t in (eager if isinstance(eager, tuple) else (eager,))]
    session = new_session(onnx_path, threads=None)
    onnx_out = session.run(None, {"images": x.numpy()})
    e_ref, e_onnx = eager[0], onnx_out[0]
    cos = np.sum(_unit(e_ref) * _unit(e_onnx), axis=1)
    out: dict[str, Any] = {
        "batch": batch,
        "max_abs_diff_embeddings": float(np.abs(e_ref - e_onnx).max()),
        "min_cosine": float(cos.min()),
        "max_abs_diff_scores": 0.0,
        "same_top5": True,
    }
    if len(eager) > 1:
        s_ref, s_onnx = eager[1], onnx_out[1]
        k = min(5, s_ref.shape[1])
        top_ref = np.argsort(-s_ref, axis=1)[:, :k]
        top_onnx = np.argsort(-s_onnx, axis=1)[:, :k]
        out["max_abs_diff_scores"] = float(np.abs(s_ref - s_onnx).max())
        out["same_top5"] = bool((top_ref == top_onnx).all())
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def new_session(path: Path, threads: int | None) -> Any:
    """An ONNX Runtime CPU session: full graph optimisation, ``threads`` intra-op threads (0 = cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own classes for damaged files
        raise H2FError(
            f"cannot load the ONNX model ({str(exc).splitlines()[0][:200]})",
            path=path,
            hint="re-export it with `h2f export RUN --format onnx --force`",
        ) from None


def load_session(run: Path, card: ModelCard, *, threads: int | None = None) -> Any:
    """The run's exported model, refusing an export that no longer matches the checkpoint."""
    onnx_path, meta_path = export_paths(run)
    if not onnx_path.is_file() or not meta_path.is_file():
        raise H2FError(
            "this run has no ONNX export yet",
            path=onnx_path,
            hint=f"create it with `h2f export {run} --format onnx`, or use --backend torch",
        )
    meta = _read_meta(meta_path)
    if not same_model(meta.get("model"), run, card):
        raise H2FError(
            "the ONNX export is out of date: the run's checkpoint changed since it was exported",
            path=onnx_path,
            hint=f"re-export it with `h2f export {run} --format onnx`",
        )
    return new_session(onnx_path, threads)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
