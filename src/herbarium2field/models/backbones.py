"""Create a timm backbone by name, with weights from the hub or a local file, and its preprocessing.

Normalisation and input size are read from the backbone's ``pretrained_cfg`` (never hard-coded), with
one exception recorded here: weights whose provenance implies another normalisation.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from herbarium2field.data.transforms import Preprocessing
from herbarium2field.errors import H2FError
from herbarium2field.models.weights import OFFLINE_LITE0, LoadReport, load_into, resolve_weights_path

#: Preprocessing implied by known weight files, overriding the architecture's pretrained_cfg.
#: The offline EfficientNet-Lite0 file is a port of Google's TensorFlow checkpoint, trained on inputs
#: scaled to [-1, 1] (mean 0.5, std 0.5), unlike timm's own ``efficientnet_lite0`` weights. Use it with
#: ``tf_efficientnet_lite0`` (TensorFlow "SAME" padding, BatchNorm eps 1e-3): measured on the real sample, its
#: features are better than with ``efficientnet_lite0`` (docs/baselines.md).
WEIGHT_PREPROCESSING: dict[str, dict[str, Any]] = {
    OFFLINE_LITE0: {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
}


def create_backbone(name: str, *, pretrained: bool = False, weights: str | None = None,
                    global_pool: str | None = "avg", drop_path_rate: float = 0.0,
                    **timm_kwargs: Any) -> tuple[nn.Module, LoadReport | None]:
    """A timm model without classifier (``num_classes=0``), optionally loaded with weights.

    ``global_pool=""`` returns the feature map (for our own pooling, e.g. GeM); ``None`` keeps the
    architecture's own default (``"token"``, the class token, for ViTs: with ``"avg"`` timm swaps their
    final ``norm`` for a fresh ``fc_norm``). ``timm_kwargs`` go to ``timm.create_model`` unchanged.
    """
    if pretrained and weights:
        raise H2FError("set either model.pretrained (timm hub) or model.weights (a local file), not both")
    kwargs: dict[str, Any] = {"num_classes": 0, **timm_kwargs}
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:8]
            raise H2FError(f"unknown timm backbone {name!r}",
                           hint=f"similar names: {', '.join(close)}" if close else "see timm.list_models()") from None
        raise _hub_error(name, exc) from None
    except (OSError, ConnectionError, ValueError) as exc:
        raise _hub_error(name, exc) from None
    except Exception as exc:  # huggingface_hub raises its own classes; keep the message, drop the traceback
        if pretrained:
            raise _hub_error(name, exc) from None
        raise
    report = load_into(model, resolve_weights_path(weights)) if weights else None
    return model, report


def _hub_error(name: str, exc: BaseException) -> H2FError:
    return H2FError(
        f"could not download pretrained weights for {name!r} from the timm/Hugging Face hub "
        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
        hint="without internet, download the weights elsewhere and set `model.weights: /path/to/file.pth` "
        "(any state dict, timm, Lightning or PlantCLEF checkpoint) with `model.pretrained: false`; "
        f"for EfficientNet-Lite0 use `model.weights: {OFFLINE_LITE0}`",
    )


def preprocessing_for(model: nn.Module, *, weights: str | None = None, image_size: int | None = None) -> Preprocessing:
    """Normalisation and input size from the model's ``pretrained_cfg`` (plus known weight-file overrides)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    override = WEIGHT_PREPROCESSING.get(weights or "", {})
    size = image_size or int(cfg["input_size"][-1])
    return Preprocessing(
        input_size=size,
        mean=tuple(override.get("mean", cfg["mean"])),  # type: ignore[arg-type]
        std=tuple(override.get("std", cfg["std"])),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )
