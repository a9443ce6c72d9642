"""The embedding cache (`h2f embed`): formats, resuming, staleness, PlantCLEF-style checkpoints, runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from herbarium2field.data.cache import ImageSource
from herbarium2field.data.transforms import eval_transform
from herbarium2field.errors import H2FError
from herbarium2field.features.extract import embed_dataset
from herbarium2field.features.store import load_features, shard_path
from herbarium2field.models.frozen import ExtractorSpec, frozen_from_record
from herbarium2field.models.inference import infer_images, infer_table
from herbarium2field.models.weights import OFFLINE_LITE0

TINY = ExtractorSpec(backbone="mobilenetv3_small_050", size=64, random_init=True)
FAST = {"batch_size": 16, "num_workers": 0}


def embed(data: Path, out: Path, spec: ExtractorSpec = TINY, **kw):  # type: ignore[no-untyped-def]
    return embed_dataset(data, out, spec, **{**FAST, **kw})


@pytest.fixture(scope="module")
def straight(synth_small, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One uninterrupted extraction (float32, shards of 10), shared by the tests below."""
    out = tmp_path_factory.mktemp("features") / "straight"
    return embed(synth_small, out, dtype="float32", shard_size=10)


def test_cache_holds_every_image_with_its_row(synth_small, straight):
    rep = straight
    f = load_features(rep.out)
    assert rep.complete and rep.embedded == len(f.table) == 76 and rep.reused == 0
    assert set(f.table.split) == {"train", "test"} and set(f.table.domain) == {"herbarium", "field"}
    assert f.embeddings.dtype == np.float32 and f.embeddings.shape == (76, rep.dim)
    np.testing.assert_allclose(np.linalg.norm(f.embeddings, axis=1), 1.0, atol=1e-5)
    meta = f.meta
    assert (
        meta["spec"]["backbone"] == "mobilenetv3_small_050"
        and meta["spec"]["preprocessing"]["input_size"] == 64
    )
    assert meta["spec"]["dataset_root"] == str(synth_small.resolve()) and meta["complete"]
    assert len(f.class_ids) == 6 and f.with_pairs == {c for c in f.class_ids if c in f.with_pairs}
    # the cache row of an image is what embedding that image alone gives (same preprocessing, same net)
    ex = frozen_from_record(meta["spec"])
    img = ImageSource(synth_small, size=320).load(f.table.path[5])
    one, _ = infer_images(ex.extractor, [img])
    np.testing.assert_allclose(one[0], f.embeddings[5], atol=1e-5)


def test_interrupted_extraction_resumes_to_the_same_arrays(synth_small, straight, tmp_path):
    part = embed(synth_small, tmp_path / "resumed", shard_size=10, max_images=25, dtype="float32")
    assert not part.complete and part.embedded == 30  # whole shards: 3 of 8
    with pytest.raises(H2FError, match="incomplete: 5 of 8 shards missing"):
        load_features(tmp_path / "resumed")
    # a crash mid-write leaves a temporary file; a damaged shard (e.g. disk full) is redone too
    (tmp_path / "resumed" / "shards" / ".00003.npy.x.tmp").write_bytes(b"partial")
    shard_path(tmp_path / "resumed", 1).write_bytes(b"\x93NUMPY garbage")
    rest = embed(synth_small, tmp_path / "resumed", shard_size=64)  # the recorded shard size wins
    assert rest.complete and rest.reused == 20 and rest.embedded == 56
    a, b = load_features(straight.out), load_features(tmp_path / "resumed")
    assert a.table.path.tolist() == b.table.path.tolist() and b.meta["layout"]["dtype"] == "float32"
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    again = embed(synth_small, tmp_path / "resumed")
    assert again.embedded == 0 and again.reused == 76


def test_stale_cache_is_refused_and_force_rebuilds(synth_small, straight, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(straight.out, out)
    for spec, what in [
        (ExtractorSpec(backbone="mobilenetv3_small_050", size=96, random_init=True), "preprocessing"),
        (ExtractorSpec(backbone="mobilenetv3_small_075", size=64, random_init=True), "backbone"),
        (ExtractorSpec(backbone="mobilenetv3_small_050", size=64, mean=(0.5, 0.5, 0.5), random_init=True), "mean"),
    ]:
        with pytest.raises(H2FError, match=f"stale cache(.|\n)*{what}"):
            embed(synth_small, out, spec)
    data2 = tmp_path / "data2"  # the same images, one fewer in the list
    shutil.copytree(synth_small, data2)
    lines = (data2 / "list" / "train.txt").read_text().splitlines()
    (data2 / "list" / "train.txt").write_text("\n".join(lines[1:]) + "\n")
    shutil.copytree(straight.out, tmp_path / "c2")
    with pytest.raises(H2FError, match="dataset_root"):
        embed(data2, tmp_path / "c2")
    json_meta = json.loads((tmp_path / "c2" / "meta.json").read_text())
    json_meta["spec"]["dataset_root"] = str(data2.resolve())  # as if the dataset had been edited in place
    (tmp_path / "c2" / "meta.json").write_text(json.dumps(json_meta))
    with pytest.raises(H2FError, match=r"image list changed \(76 images in the cache, 75 now\)"):
        embed(data2, tmp_path / "c2")
    rep = embed(data2, tmp_path / "c2", force=True)
    assert rep.complete and rep.embedded == 75 and len(load_features(tmp_path / "c2").table) == 75


def test_weights_change_is_detected(synth_small, tmp_path):
    net = timm.create_model("mobilenetv3_small_050", num_classes=0)
    w1, w2 = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(net.state_dict(), w1)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in net.state_dict().items()}, w2)
    out = tmp_path / "c"
    embed(synth_small, out, ExtractorSpec(backbone="mobilenetv3_small_050", weights=str(w1), size=64))
    with pytest.raises(H2FError, match="weights_sha256"):
        embed(synth_small, out, ExtractorSpec(backbone="mobilenetv3_small_050", weights=str(w2), size=64))
    shutil.copy(w2, w1)  # the file changed under the same name: the extractor notices when rebuilt
    with pytest.raises(H2FError, match="weights file changed"):
        frozen_from_record(load_features(out).meta["spec"])


def test_refuses_to_write_into_a_folder_that_is_not_a_cache(synth_small, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(H2FError, match="not an embedding cache"):
        embed(synth_small, tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_plantclef_style_vit_checkpoint(synth_small, tmp_path):
    """A ViT checkpoint with a 7,806-class head, wrapped like PlantCLEF's model_best.pth.tar, at another size."""
    torch.manual_seed(1)
    full = timm.create_model("vit_tiny_patch16_224", num_classes=7806)
    ckpt = tmp_path / "model_best.pth.tar"
    torch.save(
        {
            "epoch": 3,
            "arch": "vit_tiny_patch16_224",
            "state_dict": {"module." + k: v for k, v in full.state_dict().items()},
        },
        ckpt,
    )
    spec = ExtractorSpec(backbone="vit_tiny_patch16_224", weights=str(ckpt), size=64)
    rep = embed(synth_small, tmp_path / "c", spec, dtype="float32")
    assert rep.extractor.load_warnings == [] and "7806" not in (rep.extractor.load_summary or "")
    f = load_features(tmp_path / "c")
    assert f.dim == 192 and f.meta["spec"]["weights_sha256"] == rep.extractor.weights_sha256
    # reference: timm's own loading of the checkpoint, class token after the final norm, resized to 64 px
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=7806, checkpoint_path=str(ckpt)).eval()
    ref.set_input_size(img_size=(64, 64))
    img = ImageSource(synth_small, size=320).load(f.table.path[0])
    x = eval_transform(rep.extractor.pre)(img)[None]
    with torch.no_grad():
        e = ref.forward_head(ref.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(torch.nn.functional.normalize(e)[0].numpy(), f.embeddings[0], atol=1e-5)
    with pytest.raises(H2FError, match="not a multiple of"):
        embed(
            synth_small,
            tmp_path / "c3",
            ExtractorSpec(backbone="vit_tiny_patch16_224", weights=str(ckpt), size=70),
        )


def test_offline_lite0_weights(synth_small, tmp_path):
    spec = ExtractorSpec(backbone="efficientnet_lite0", weights=OFFLINE_LITE0, size=96)
    rep = embed(synth_small, tmp_path / "c", spec)
    meta = load_features(tmp_path / "c").meta
    assert rep.extractor.load_summary.startswith("loaded 294 tensors") and rep.dim == 1280
    assert meta["spec"]["weights"] == OFFLINE_LITE0 and len(meta["spec"]["weights_sha256"]) == 64
    assert meta["spec"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # the TF port's normalisation
    assert meta["layout"]["dtype"] == "float16"


def test_embed_with_a_trained_run(synth_small, tmp_path, monkeypatch):
    from herbarium2field.config import load_config
    from herbarium2field.data.manifest import read_dataset
    from herbarium2field.run.load import load_model
    from herbarium2field.training.train import train
    from tests.test_training import TINY as TINY_TRAIN

    monkeypatch.setenv("H2F_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("H2F_CACHE", str(tmp_path / "cache"))
    cfg = load_config(
        None,
        [
            f"data.root={synth_small}",
            "name=r",
            *TINY_TRAIN,
            "train.epochs=1",
            "data.image_size=32",
            "train.warmup_epochs=0",
        ],
    )
    run = train(cfg, progress=False).root
    rep = embed(synth_small, tmp_path / "c", ExtractorSpec(run=run), dtype="float32")
    f = load_features(tmp_path / "c")
    assert rep.dim == 32 and f.meta["spec"]["source"]["kind"] == "run"
    ds = read_dataset(synth_small)
    ref = infer_table(load_model(run).extractor, ds.table, ImageSource(synth_small, size=320), num_workers=0)
    np.testing.assert_allclose(ref.embeddings, f.embeddings, atol=1e-5)
    with pytest.raises(H2FError, match="cannot be combined with --run"):
        embed(synth_small, tmp_path / "c2", ExtractorSpec(run=run, size=96))


def test_bad_options_are_clear_errors(synth_small, tmp_path):
    with pytest.raises(H2FError, match="--backbone NAME"):
        embed(synth_small, tmp_path / "c", ExtractorSpec())
    with pytest.raises(H2FError, match="unknown timm backbone"):
        embed(synth_small, tmp_path / "c", ExtractorSpec(backbone="no_such_net", random_init=True))
    # no weights named: random features would pass for a baseline, so they need --random-init on purpose
    with pytest.raises(H2FError, match=r"no weights for 'mobilenetv3_small_050'(.|\n)*--random-init"):
        embed(synth_small, tmp_path / "c", ExtractorSpec(backbone="mobilenetv3_small_050", size=64))
    assert not (tmp_path / "c").exists()
    with pytest.raises(H2FError, match="cannot be combined"):
        embed(synth_small, tmp_path / "c", ExtractorSpec(backbone="mobilenetv3_small_050", random_init=True,
                                                         weights=OFFLINE_LITE0))
    with pytest.raises(H2FError, match="weights file not found"):
        embed(
            synth_small, tmp_path / "c", ExtractorSpec(backbone="mobilenetv3_small_050", weights="nope.pth")
        )
    with pytest.raises(H2FError, match="unknown dtype"):
        embed(synth_small, tmp_path / "c", dtype="int8")


def test_cli_embed_and_its_errors(synth_small, straight, tmp_path, h2f_main, capsys):
    out = tmp_path / "c"
    assert (
        h2f_main(
            "embed",
            str(synth_small),
            str(out),
            "--backbone",
            "mobilenetv3_small_050",
            "--random-init",
            "--size",
            "64",
            "--workers",
            "0",
            "--shard-size",
            "32",
            "--limit",
            "10",
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "32 embedded now" in text and "run the same command again" in text
    shutil.rmtree(out)
    shutil.copytree(straight.out, out)
    assert (
        h2f_main("embed", str(synth_small), str(out), "--backbone", "mobilenetv3_small_050", "--random-init",
                 "--size", "96")
        == 2
    )
    err = capsys.readouterr().err
    assert "stale cache" in err and "--force" in err and "Traceback" not in err
    assert (
        h2f_main("embed", str(synth_small), str(out), "--backbone", "mobilenetv3_small_050", "--random-init",
                 "--mean", "1,2")
        == 2
    )
    assert "three comma-separated numbers" in capsys.readouterr().err
    assert h2f_main("embed", str(synth_small), str(tmp_path / "random"), "--backbone", "mobilenetv3_small_050") == 2
    err = capsys.readouterr().err
    assert all(opt in err for opt in ("--weights", "--pretrained", "--random-init")) and "Traceback" not in err
    assert not (tmp_path / "random").exists()
