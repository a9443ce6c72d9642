"""Identification: predictor (torch and ONNX), threshold rule, photo combination, ``h2f index``/``identify``.

A tiny real network is trained once per session on the synthetic dataset, indexed and exported (the
``identify_run`` fixture, also used by test_retrieval, test_serve and test_web).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from herbarium2field.errors import H2FError
from herbarium2field.run.artefacts import InferenceChoice, ValidationSet, load_calibration, load_class_means
from herbarium2field.run.card import ModelCard, read_card
from herbarium2field.run.load import load_model
from herbarium2field.scoring.combine import (
    combine,
    compare_combinations,
    log_probabilities,
    probabilities,
    softmax,
)
from herbarium2field.scoring.threshold import choose_threshold
from tests.conftest import h2f_here


def test_photos(data: Path, n: int = 3) -> list[Path]:
    return sorted((data / "test").glob("*.jpg"))[:n]


test_photos.__test__ = False  # a helper, not a test


def h2f(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``h2f ARGS`` through the console script's entry point, in this process (test_cli.py runs each command as
    a real subprocess; a fresh interpreter here would add 10-15 s of imports per call)."""
    return h2f_here(*args, env={"COLUMNS": "160", **(env or {})})


# ---- the threshold rule and the combination of photos (pure functions) -------------------------------


def test_threshold_is_the_lowest_reaching_the_target_precision():
    # 12 photos by decreasing confidence; precision of the kept photos dips (3/4 at 4 kept), then recovers
    # to 9/10 = 90 % at 10 kept, then falls (9/11): the lowest threshold at >= 90 % keeps 10 photos.
    conf = np.linspace(0.99, 0.2, 12)
    ok = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    r = choose_threshold(conf, ok, target=0.9)
    assert r["reached"] and r["threshold"] == pytest.approx(conf[9])
    assert (
        r["precision"] == pytest.approx(0.9)
        and r["coverage"] == pytest.approx(10 / 12)
        and r["accepted"] == 10
    )
    # 95 % is reached only by the top 3 photos (3/3): fewer than the 5 a threshold must keep
    assert choose_threshold(conf, ok, target=0.95)["threshold"] is None
    stricter = choose_threshold(conf, ok, target=0.95, min_accepted=3)
    assert stricter["threshold"] == pytest.approx(conf[2]) and stricter["coverage"] == pytest.approx(3 / 12)


def test_threshold_rules_out_lucky_single_photos_and_unreachable_targets():
    conf = np.array([0.99, 0.5, 0.4, 0.3, 0.2, 0.1])
    ok = np.array([1, 0, 0, 0, 0, 0], bool)
    r = choose_threshold(conf, ok, target=0.9, min_accepted=5)
    assert not r["reached"] and r["threshold"] is None and r["coverage"] == 0.0  # 1/1 right is not evidence
    assert choose_threshold(np.zeros(0), np.zeros(0, bool))["threshold"] is None
    ties = choose_threshold(np.array([0.8] * 6 + [0.1]), np.array([1, 1, 1, 1, 1, 0, 0], bool), target=0.8)
    assert ties["threshold"] == pytest.approx(0.8) and ties["accepted"] == 6  # ties are kept together


def test_combining_photos():
    scores = np.array([[4.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    p = softmax(scores)
    lp = log_probabilities(scores, "logits")
    np.testing.assert_allclose(np.exp(lp), p, rtol=1e-6)
    np.testing.assert_allclose(combine(lp, "probabilities"), p.mean(0), rtol=1e-6)
    geo = np.exp(np.log(p).mean(0))
    np.testing.assert_allclose(combine(lp, "geometric"), geo / geo.sum(), rtol=1e-5)
    np.testing.assert_allclose(combine(lp, "geometric"), softmax(scores.mean(0)), rtol=1e-5)  # = mean logits
    np.testing.assert_allclose(combine(lp[:1]), p[0], rtol=1e-6)
    with pytest.raises(ValueError):
        combine(lp, "vote")
    labels = np.array([0, 0, 1, 1])
    cmp = compare_combinations(
        log_probabilities(np.array([[3.0, 0], [2, 0], [0, 2], [1, 0]])), labels, sizes=(2,)
    )
    assert cmp["single"]["top1"] == 0.75 and cmp["groups_of_2"]["groups"] == 2


def test_classifier_probabilities_are_used_as_they_are():
    # a classic run's scores are probabilities, with -inf for species it never saw
    scores = np.array([[0.7, 0.2, 0.1, -np.inf], [0.5, 0.5, 0.0, -np.inf]])
    probs = probabilities(scores, "probabilities")
    np.testing.assert_allclose(probs, [[0.7, 0.2, 0.1, 0], [0.5, 0.5, 0, 0]], atol=1e-6)
    lp = log_probabilities(scores, "probabilities")
    np.testing.assert_allclose(combine(lp, "probabilities"), [0.6, 0.35, 0.05, 0], atol=1e-6)
    geo = combine(lp, "geometric")  # species 2 is ruled out by the second photo
    assert geo[2] == 0 and geo[3] == 0 and geo.sum() == pytest.approx(1.0)


# ---- predictor ---------------------------------------------------------------------------------------


def test_torch_and_onnx_predictors_agree(identify_run, synth_small):
    from herbarium2field.data.images import load_rgb

    images = [load_rgb(p, min_side=320) for p in test_photos(synth_small, 6)]
    t = load_model(identify_run, "torch")
    o = load_model(identify_run, "onnx")
    assert (t.backend, o.backend) == ("torch", "onnx")
    et, st = t.predict(images)
    eo, so = o.predict(images)
    card = t.card
    assert et.shape == (6, card.embedding_dim) and st.shape == (6, len(card.class_ids))
    np.testing.assert_allclose(np.linalg.norm(et, axis=1), 1.0, atol=1e-5)
    assert np.abs(et - eo).max() < 1e-4 and (et * eo).sum(1).min() > 0.9999
    k = 5
    assert (np.argsort(-st, 1)[:, :k] == np.argsort(-so, 1)[:, :k]).all()
    meta = json.loads((identify_run / "export" / "meta.json").read_text())
    assert meta["opset"] >= 17 and meta["check"]["same_top5"] and meta["input"]["shape"][0] == "batch"


def test_predictor_is_safe_under_concurrent_calls(identify_run, synth_small):
    from herbarium2field.data.images import load_rgb

    pred = load_model(identify_run, "torch")
    images = [load_rgb(p, min_side=320) for p in test_photos(synth_small, 4)]
    want = [pred.predict([img])[1] for img in images]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = pred.predict([images[i % 4]])[1]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i, scores in got.items():
        np.testing.assert_allclose(scores, want[i % 4], atol=1e-5)


def test_onnx_backend_without_export_says_how_to_make_it(identify_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(identify_run, run, ignore=shutil.ignore_patterns("export", "tb"))
    with pytest.raises(H2FError, match="h2f export"):
        load_model(run, "onnx")
    with pytest.raises(H2FError, match="unknown backend"):
        load_model(run, "tensorrt")


# ---- calibration -------------------------------------------------------------------------------------


def test_calibration_uses_the_training_validation_split(identify_run, synth_small):
    from herbarium2field.config import load_config
    from herbarium2field.data.datamodule import H2FDataModule
    from herbarium2field.data.manifest import read_dataset

    card = read_card(identify_run)
    cal = load_calibration(identify_run, card)
    assert cal is not None and cal["target_precision"] == 0.9 and cal["validation"]["domain"] == "field"
    held_out = H2FDataModule(load_config(identify_run / "config.yaml"), read_dataset(synth_small)).val_table
    val = ValidationSet.load(identify_run, card)  # what the end of training stored: the same held-out images
    assert sorted(val.paths) == sorted(held_out.path)
    field = held_out[held_out.domain == "field"]
    assert cal["n"] == len(field) > 0
    assert (cal["threshold"] is None) == (not cal["reached"])
    assert "groups_of_2" in cal["combination"] or cal["n"] < 2


# ---- h2f index / identify / export from the command line --------------------------------------------


def test_index_is_skipped_when_up_to_date_and_redone_when_data_change(identify_run, synth_small, tmp_path):
    from herbarium2field.identify.commands import index_run

    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(identify_run, run, ignore=shutil.ignore_patterns("tb"))
    shutil.copytree(synth_small, data)  # copy2 keeps mtimes: same fingerprints
    out = h2f("index", str(run), "--data", str(data), "--workers", "0")
    assert out.returncode == 0, out.stderr
    assert "gallery up to date" in out.stdout and "confidence up to date" in out.stdout

    sheet = sorted((data / "train" / "herbarium").rglob("*.jpg"))[0]
    Image.new("RGB", (60, 80), (200, 30, 30)).save(sheet)  # a changed sheet
    bad = sorted((data / "train" / "herbarium").rglob("*.jpg"))[1]
    bad.write_text("<html>not an image</html>")  # an unreadable sheet is skipped, not fatal
    res = index_run(run, data=data, progress=False, num_workers=0)
    assert not res.gallery.up_to_date and res.gallery.reason == "the herbarium images changed"
    assert [rel for rel, _ in res.gallery.skipped] == [bad.relative_to(data).as_posix()]
    meta = json.loads((run / "gallery" / "meta.json").read_text())
    before = json.loads((identify_run / "gallery" / "meta.json").read_text())
    assert meta["data"]["images"] == before["data"]["images"] - 1 and len(meta["skipped"]) == 1
    assert res.calibration_up_to_date  # the threshold rests on the stored validation outputs, not the data
    again = index_run(run, data=data, progress=False, num_workers=0)
    assert again.gallery.up_to_date and again.calibration_up_to_date
    forced = index_run(run, data=data, progress=False, num_workers=0, force=True)
    assert not forced.gallery.up_to_date and not forced.calibration_up_to_date
    assert forced.calibration["threshold"] == res.calibration["threshold"]
    assert not list(run.glob(".gallery*")), "temporary gallery folders left behind"


def test_gallery_of_another_checkpoint_is_refused(identify_run, tmp_path):
    from herbarium2field.identify.commands import index_run
    from herbarium2field.identify.service import Identifier

    run = tmp_path / "run"
    shutil.copytree(identify_run, run, ignore=shutil.ignore_patterns("tb"))
    meta_path = run / "gallery" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(H2FError, match="older checkpoint"):
        Identifier(run)
    res = index_run(run, progress=False, num_workers=0)
    assert res.gallery.reason == "the model changed"
    assert len(Identifier(run).gallery) == res.gallery.images


def test_identify_cli_table_and_json(identify_run, synth_small):
    photos = [str(p) for p in test_photos(synth_small, 2)]
    table = h2f("identify", str(identify_run), *photos)
    assert table.returncode == 0, table.stderr
    card = ModelCard.load(identify_run / "model_card.json")
    assert "2 photos of one plant" in table.stdout and any(s.split()[0] in table.stdout for s in card.species)
    assert "confident" in table.stdout.lower() or "most likely" in table.stdout.lower()

    res = h2f("identify", str(identify_run), *photos, "--json", "--top-k", "3", "--backend", "onnx")
    assert res.returncode == 0, res.stderr
    ans = json.loads(res.stdout)
    assert ans["model"]["backend"] == "onnx" and [p["name"] for p in ans["photos"]] == photos
    assert len(ans["results"]) == 3 and [r["rank"] for r in ans["results"]] == [1, 2, 3]
    scores = [r["score"] for r in ans["results"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    for r in ans["results"]:
        assert (
            r["class_id"] in card.class_ids
            and r["species"] == card.species[card.class_ids.index(r["class_id"])]
        )
        assert 1 <= len(r["herbarium"]) <= 3 and all(s["class_id"] == r["class_id"] for s in r["herbarium"])
        sims = [s["similarity"] for s in r["herbarium"]]
        assert sims == sorted(sims, reverse=True)
    assert set(ans["threshold"]) >= {"value", "reached", "precision", "coverage", "target_precision"}
    value = ans["threshold"]["value"]  # the answer is confident exactly when its top score reaches the threshold
    assert ans["confident"] is (value is not None and ans["results"][0]["score"] >= value)
    assert isinstance(ans["message"], str)
    assert ans["nearest_sheets"] and ans["combine"] == "probabilities"


def test_identify_names_every_bad_photo(identify_run, synth_small, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("field notes, not a photo\n")
    good = test_photos(synth_small, 1)[0]
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    res = h2f(
        "identify", str(identify_run), str(good), str(text), str(truncated), str(tmp_path / "missing.jpg")
    )
    assert res.returncode == 2 and res.stdout == ""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 3, res.stderr
    assert "notes.jpg" in lines[0] and "not an image" in lines[0]
    assert "cut.jpg" in lines[1] and "truncated" in lines[1]
    assert "missing.jpg" in lines[2] and "not found" in lines[2]
    assert "Traceback" not in res.stderr


def test_export_is_skipped_when_up_to_date(identify_run):
    out = h2f("export", str(identify_run), "--format", "onnx")
    assert out.returncode == 0 and "up to date" in out.stdout, out.stderr
    bad = h2f("export", str(identify_run), "--format", "tflite")
    assert bad.returncode == 2 and "onnx" in bad.stderr


# ---- classic runs (h2f fit-classic): frozen backbone + fitted classifier ----------------------------


@pytest.fixture(scope="module")
def classic_run(tmp_path_factory: pytest.TempPathFactory, synth_small: Path) -> Path:
    from herbarium2field.features.classic import fit_classic, save_classic
    from herbarium2field.features.extract import embed_dataset
    from herbarium2field.identify.commands import index_run
    from herbarium2field.identify.export import export_onnx
    from herbarium2field.models.frozen import ExtractorSpec

    base = tmp_path_factory.mktemp("classic_ident")
    spec = ExtractorSpec(backbone="mobilenetv3_small_050", size=64, random_init=True)
    embed_dataset(synth_small, base / "feats", spec, batch_size=32, num_workers=0)
    run = save_classic(fit_classic(base / "feats", "logreg"), base / "run").root
    index_run(run, progress=False, num_workers=0)
    export_onnx(run)
    return run


def test_classic_run_identifies_with_both_backends(classic_run, synth_small):
    from herbarium2field.data.images import load_rgb
    from herbarium2field.identify.service import Identifier

    images = [load_rgb(p, min_side=320) for p in test_photos(synth_small, 3)]
    t, o = Identifier(classic_run, backend="torch"), Identifier(classic_run, backend="onnx")
    assert t.model.score_kind == o.model.score_kind == "probabilities"
    a, b = t.identify(images, top_k=3), o.identify(images, top_k=3)
    assert [r["class_id"] for r in a["results"]] == [r["class_id"] for r in b["results"]]
    assert [r["score"] for r in a["results"]] == pytest.approx([r["score"] for r in b["results"]], abs=1e-4)
    assert a["results"][0]["herbarium"] and a["confidence"].startswith("the classifier's probability")
    # fit-classic records no validation split here: no threshold, and the answer says so
    assert a["threshold"] is None and a["confident"] is None and "no confidence threshold" in a["message"]
    emb, scores = t.model.predict(images)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-4)  # predict_proba, used as is


def test_prototype_inference_mode_ranks_by_shifted_prototypes(tiny_run, tmp_path):
    """A run whose inference choice is `prototype` is evaluated and identified that way."""
    from herbarium2field.evaluation.evaluate import evaluate_run
    from herbarium2field.evaluation.outputs import split_outputs
    from herbarium2field.identify.calibrate import recalibrate
    from herbarium2field.scoring.prototypes import prototype_scores, prototypes

    run = tmp_path / "proto"
    shutil.copytree(tiny_run, run)
    card = read_card(run)
    InferenceChoice(mode="prototype", prototype_source="shifted", label="prototype-shifted", scale=15.0).save(run, card)
    recalibrate(run, force=True)
    (res,) = evaluate_run(run, n_boot=0)
    assert res.mode == "prototype-shifted"
    model = load_model(run)
    test = split_outputs(model, "test")
    images = [Image.open(Path(card.dataset["root"]) / p) for p in test.table.path[:3]]
    emb, scores = model.predict(images)
    want = 15.0 * prototype_scores(emb, prototypes(load_class_means(run, card), "shifted"))
    assert np.allclose(scores, want, atol=1e-4)
    assert not np.allclose(scores, load_model(tiny_run).predict(images)[1], atol=1e-2)
