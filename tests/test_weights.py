"""Weight loading from every file kind users bring, including the offline ImageNet EfficientNet-Lite0 file."""

from __future__ import annotations

import pytest
import timm
import torch

from herbarium2field.errors import H2FError
from herbarium2field.models.backbones import create_backbone, preprocessing_for
from herbarium2field.models.weights import OFFLINE_LITE0, load_into, read_state_dict

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
    assert report.matched == len(model.state_dict())
    ref = torch.load(__import__("herbarium2field.models.weights", fromlist=["x"]).resolve_weights_path(OFFLINE_LITE0),
                     map_location="cpu")
    assert torch.equal(model.conv_stem.weight, ref["_conv_stem.weight"])
    pre = preprocessing_for(model, weights=OFFLINE_LITE0)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.input_size == 224


def test_hub_failure_names_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
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
