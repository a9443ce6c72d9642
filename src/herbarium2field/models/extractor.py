"""The one extractor interface: a batch of preprocessed images in, L2-normalised embeddings (and the head's
class logits, when the model has a head) out.

Every command that turns pixels into numbers (evaluation, ``h2f embed``, the gallery, identification,
prediction of collections) holds an :class:`Extractor` and feeds it through
:mod:`herbarium2field.models.inference`, so they all see the same preprocessing, precision and
normalisation. Two implementations:

- :class:`TorchExtractor` wraps an :class:`~herbarium2field.models.network.H2FNet` (embedding + head) or a
  bare timm backbone (its pooled features are the embedding, no head). It runs channels-last (on a CPU
  too: EfficientNet-Lite0 embeds 1.5-1.8x faster on 2 cores, ResNet-50 1.2-1.6x, ConvNeXt V2 the same;
  outputs agree to ~1e-6), under bf16 autocast on a GPU unless ``precision="fp32"``.
- :class:`OnnxExtractor` runs the same model exported to ONNX with ONNX Runtime on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from herbarium2field.data.transforms import Preprocessing
from herbarium2field.errors import H2FError

PRECISIONS = ("auto", "fp32", "bf16")


class Extractor(Protocol):
    """What inference needs from a model."""

    pre: Preprocessing  # the input it expects (size, normalisation)

    @property
    def dim(self) -> int:
        """Embedding size."""
        ...

    @property
    def num_classes(self) -> int | None:
        """Width of the head's logits; ``None`` for a bare feature extractor."""
        ...

    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """``(embeddings [B, D] float32 L2-normalised, logits [B, C] float32 | None)`` of a CPU batch."""
        ...


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a GPU by default (``auto``), or when asked; full precision otherwise."""
    if precision not in PRECISIONS:
        raise H2FError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def pooled(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The embedding before L2-normalisation: ``net.embed`` for an H2FNet, pooled features for a timm model."""
    e = net.embed(x) if hasattr(net, "embed") else net(x)
    if e.ndim > 2:  # feature map or tokens from a backbone without pooling
        e = e.flatten(2).mean(-1) if e.ndim == 4 else e.mean(1)
    return e


class TorchExtractor:
    """An eager PyTorch model (H2FNet or timm backbone) as an :class:`Extractor`."""

    def __init__(self, net: nn.Module, pre: Preprocessing, *, precision: str = "auto",
                 device: torch.device | None = None) -> None:
        self.device = device or default_device()
        self.amp = autocast_dtype(precision, self.device)
        self.precision = precision
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)
        self.pre = pre
        self.has_head = hasattr(net, "embed") and hasattr(net, "head")
        self._dim: int | None = int(net.embedding_dim) if hasattr(net, "embedding_dim") else None
        self._classes: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:  # a timm backbone: its pooled width depends on the architecture; ask it
            s = self.pre.input_size
            self._dim = int(self(torch.zeros(1, 3, s, s))[0].shape[1])
        return self._dim

    @property
    def num_classes(self) -> int | None:
        if not self.has_head:
            return None
        if self._classes is None:
            s = self.pre.input_size
            logits = self(torch.zeros(1, 3, s, s))[1]
            self._classes = int(logits.shape[1]) if logits is not None else None
        return self._classes

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            e = pooled(self.net, x)
            logits = self.net.head.logits(e) if self.has_head else None  # type: ignore[attr-defined]
        emb = F.normalize(e.float(), dim=1).cpu().numpy()
        return emb, (logits.float().cpu().numpy() if logits is not None else None)


class OnnxExtractor:
    """A model exported by ``h2f export`` run by ONNX Runtime: output 0 is the L2-normalised embedding,
    output 1 (networks only) the head's logits."""

    def __init__(self, session: Any, pre: Preprocessing) -> None:
        self.session = session
        self.pre = pre
        self.input_name = session.get_inputs()[0].name
        outs = session.get_outputs()
        self._dim = int(outs[0].shape[1])
        self._classes = int(outs[1].shape[1]) if len(outs) > 1 else None
        self.precision = "fp32"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def num_classes(self) -> int | None:
        return self._classes

    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        outs = self.session.run(None, {self.input_name: x.numpy().astype(np.float32, copy=False)})
        emb = np.asarray(outs[0], np.float32)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb, (np.asarray(outs[1], np.float32) if len(outs) > 1 else None)

    @classmethod
    def from_file(cls, path: Path, pre: Preprocessing, *, threads: int | None = None) -> OnnxExtractor:
        """Open ``path`` with ONNX Runtime on the CPU: full graph optimisation, ``threads`` intra-op threads."""
        import onnxruntime as ort  # heavy, and only needed on this path

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own classes for damaged files
            raise H2FError(f"cannot load the ONNX model ({str(exc).splitlines()[0][:200]})", path=path,
                           hint="re-export it with `h2f export RUN --format onnx --force`") from None
        return cls(session, pre)


#: ITU-R 601-2 luma weights, as PIL's ``convert("L")`` uses.
LUMA = (0.299, 0.587, 0.114)


class GreyscaleExtractor:
    """Another extractor applied to the greyscale version of the same batch: the photo as the herbarium-only
    branch sees it (the sheets are matched in grey). The conversion is done on the normalised tensor, so the
    photo is read and resized once; grey is linear, so converting after the resize equals converting before."""

    def __init__(self, inner: Extractor) -> None:
        self.inner = inner
        self.pre = inner.pre
        self._mean = torch.tensor(inner.pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(inner.pre.std, dtype=torch.float32).view(1, 3, 1, 1)
        self._luma = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def num_classes(self) -> int | None:
        return None

    def grey(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.float() * self._std + self._mean
        y = (rgb * self._luma).sum(dim=1, keepdim=True).clamp(0, 1)
        return (y.expand(-1, 3, -1, -1) - self._mean) / self._std

    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        return self.inner(self.grey(x))[0], None
