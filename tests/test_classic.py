"""Classical classifiers on cached features (`h2f fit-classic`): round trips, alignment, API, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from herbarium2field.errors import H2FError
from herbarium2field.evaluation.evaluate import evaluate_run
from herbarium2field.evaluation.outputs import split_outputs
from herbarium2field.features.classic import ABSENT, fit_classic, load_classic, save_classic
from herbarium2field.features.extract import embed_dataset
from herbarium2field.features.store import load_features, shard_path
from herbarium2field.models.align import fit_alignment
from herbarium2field.models.classifiers import CLASSIFIERS
from herbarium2field.models.frozen import ExtractorSpec
from herbarium2field.models.weights import OFFLINE_LITE0
from herbarium2field.run.load import load_model


@pytest.fixture(scope="module")
def cache(synth_small, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """Real ImageNet features (offline EfficientNet-Lite0, 96 px) of the tiny synthetic dataset."""
    out = tmp_path_factory.mktemp("classic") / "lite0"
    embed_dataset(
        synth_small,
        out,
        ExtractorSpec(backbone="efficientnet_lite0", weights=OFFLINE_LITE0, size=96),
        batch_size=32,
        num_workers=0,
    )
    return out


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_each_classifier_round_trips_through_disk(cache, tmp_path, classifier):
    feats = load_features(cache)
    model = fit_classic(feats, classifier, align="standardize" if classifier == "logreg" else "none")
    test, x = feats.select(split="test")
    before = model.scores(x)
    paths = save_classic(model, tmp_path / "run")
    loaded = load_classic(paths.root)
    np.testing.assert_array_equal(loaded.scores(x), before)
    card = json.loads(paths.card.read_text())
    assert card["kind"] == "classic" and card["class_ids"] == feats.class_ids and card["name"] == "run"
    assert card["model"]["classifier"] == classifier and card["model"]["weights"] == OFFLINE_LITE0
    assert card["model"]["features"] == str(cache.resolve()) and card["embedding_dim"] == 1280
    assert card["preprocessing"]["input_size"] == 96 and sorted(card["with_pairs"]) == sorted(
        feats.with_pairs
    )
    assert (paths.root / "environment.json").is_file()
    assert before.shape == (len(test), 6) and np.isfinite(before).all()
    run_model = load_model(paths.root)
    out = split_outputs(run_model, "test")  # evaluation reads the run's own feature cache
    assert out.table.path.tolist() == test.path.tolist() and out.logits is None
    np.testing.assert_array_equal(run_model.scorer(out.embeddings, None), before)
    np.testing.assert_array_equal(out.embeddings, x)


def test_backbone_embeds_new_photos_like_the_cache(cache, synth_small, tmp_path):
    from herbarium2field.data.cache import ImageSource

    feats = load_features(cache)
    paths = save_classic(fit_classic(feats, "ncm"), tmp_path / "run")
    model = load_model(paths.root)
    assert model.pre.input_size == 96 and model.pre.mean == (0.5, 0.5, 0.5)
    rows = [0, 40, 70]
    imgs = [ImageSource(synth_small, size=320).load(feats.table.path[i]) for i in rows]
    emb, scores = model.predict(imgs)
    np.testing.assert_allclose(emb, feats.embeddings[rows], atol=2e-3)  # the cache is float16
    np.testing.assert_allclose(scores, load_classic(paths.root).scores(feats.embeddings[rows]), atol=1e-2)


def test_species_without_training_images_score_minus_infinity(cache):
    feats = load_features(cache)
    gone = feats.class_ids[0]
    keep = (feats.table.class_id != gone).to_numpy()
    for classifier in CLASSIFIERS:
        model = fit_classic(feats, classifier, train_mask=keep)
        s = model.scores(feats.select(split="test")[1])
        assert (s[:, 0] == ABSENT).all() and np.isfinite(s[:, 1:]).all(), classifier
        assert gone not in model.card.with_pairs


def test_removing_field_photos_moves_a_species_to_without_pairs(cache):
    feats = load_features(cache)
    t = feats.table
    sp = sorted(feats.with_pairs)[0]
    keep = ~((t.class_id == sp) & (t.domain == "field")).to_numpy()
    model = fit_classic(feats, "logreg", train_mask=keep)
    assert sp not in model.card.with_pairs and len(model.card.with_pairs) == len(feats.with_pairs) - 1
    assert model.card.dataset["removed_by_train_mask"] == int((~keep & feats.mask(split="train")).sum())
    herb = fit_classic(feats, "ncm", domains="herbarium")
    assert herb.card.dataset["train_field"] == 0 and herb.card.with_pairs == sorted(feats.with_pairs)


def test_svm_calibration_copes_with_rare_classes(cache):
    feats = load_features(cache)
    cv = fit_classic(feats, "svm")
    assert cv.card.model["calibration"].startswith("sigmoid, 3-fold CV")
    t = feats.table
    sp = feats.class_ids[2]
    rows = np.flatnonzero(((t.class_id == sp) & (t.split == "train")).to_numpy())
    keep = np.ones(len(t), dtype=bool)
    keep[rows[1:]] = False  # a species with a single training image: no cross-validation possible
    single = fit_classic(feats, "svm", train_mask=keep)
    assert single.card.model["calibration"].startswith("none: softmax of SVM margins (1 classes")
    p = single.scores(feats.select(split="test")[1])
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    keep[rows[2:]] = False
    keep[rows[:2]] = True  # two images: 2-fold CV
    assert "2-fold CV (asked 3" in fit_classic(feats, "svm", train_mask=keep).card.model["calibration"]


def test_coral_gives_herbarium_features_the_field_covariance():
    rng = np.random.default_rng(0)
    d = 6
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    herb = rng.normal(size=(4000, d)) @ a + 3.0
    field = rng.normal(size=(3000, d)) @ b - 1.0
    x = np.vstack([herb, field])
    dom = np.array(["herbarium"] * 4000 + ["field"] * 3000)
    al = fit_alignment(x, dom, "coral", reg=1e-6)
    out = al.transform(x, dom)
    np.testing.assert_allclose(np.cov(out[:4000], rowvar=False), np.cov(field, rowvar=False), atol=1e-3)
    np.testing.assert_allclose(out[:4000].mean(0), field.mean(0), atol=1e-4)
    np.testing.assert_array_equal(out[4000:], field.astype(np.float32))  # field photos are left alone
    np.testing.assert_array_equal(al.transform(field), field.astype(np.float32))
    # regularisation (CORAL's "+ I") shrinks the map; it still moves the herbarium covariance towards the field's
    before = np.linalg.norm(np.cov(herb, rowvar=False) - np.cov(field, rowvar=False))
    gaps = [
        np.linalg.norm(
            np.cov(fit_alignment(x, dom, "coral", reg=r).transform(x, dom)[:4000], rowvar=False)
            - np.cov(field, rowvar=False)
        )
        for r in (1.0, 0.1, 1e-3)
    ]
    assert before > gaps[0] > gaps[1] > gaps[2]


def test_standardize_uses_each_domains_own_statistics():
    rng = np.random.default_rng(1)
    herb = rng.normal(5.0, 3.0, size=(500, 4))
    field = rng.normal(-2.0, 0.5, size=(300, 4))
    x, dom = np.vstack([herb, field]), np.array(["herbarium"] * 500 + ["field"] * 300)
    al = fit_alignment(x, dom, "standardize")
    out = al.transform(x, dom)
    for part in (out[:500], out[500:]):
        np.testing.assert_allclose(part.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(part.std(0), 1, atol=1e-4)
    new = rng.normal(-2.0, 0.5, size=(5, 4))  # new photos: the field statistics
    np.testing.assert_allclose(al.transform(new), (new - field.mean(0)) / field.std(0), rtol=1e-4)
    with pytest.raises(H2FError, match="at least 2 training images of each domain"):
        fit_alignment(herb, np.array(["herbarium"] * 500), "standardize")


def test_alignment_is_fitted_on_training_images_only(cache):
    feats = load_features(cache)
    model = fit_classic(feats, "ncm", align="coral")
    for domain in ("herbarium", "field"):  # test photos (all field) play no part
        ref = feats.embeddings[feats.mask("train", domain)].mean(0)
        np.testing.assert_allclose(model.head.alignment.stats[f"mean_{domain}"], ref, atol=1e-6)
    with pytest.raises(H2FError, match="needs at least 2 training images of each domain"):
        fit_classic(feats, "logreg", align="coral", domains="herbarium")


def test_validation_holds_out_field_photos(cache):
    feats = load_features(cache)
    model = fit_classic(feats, "logreg", val_field_fraction=0.3)
    v = model.card.validation
    assert v["n"] > 0 and 0 <= v["val_top1"] <= v["val_top5"] <= 1
    assert model.card.dataset["train_field"] == int(feats.mask("train", "field").sum()) - v["n"]


def test_new_data_and_a_rebuilt_cache_are_embedded_with_the_frozen_backbone(cache, synth_small, tmp_path):
    """Evaluation needs only the run: rows its feature cache lacks (another dataset, or a cache rebuilt
    differently since) are embedded by the run's own frozen backbone, the same numbers up to float16."""
    feats_dir = tmp_path / "feats"
    shutil.copytree(cache, feats_dir)
    run = save_classic(fit_classic(feats_dir, "ncm"), tmp_path / "run").root
    model = load_model(run)
    cached = split_outputs(model, "train", data=synth_small)
    assert len(cached.table) == int(load_features(feats_dir).mask(split="train").sum())
    other = tmp_path / "other"  # the same images, one test photo fewer: not the run's dataset
    shutil.copytree(synth_small, other)
    for name in ("test.txt", "groundtruth.txt"):
        lines = (other / "list" / name).read_text().splitlines()
        (other / "list" / name).write_text("\n".join(lines[1:]) + "\n")
    fresh = split_outputs(model, "test", data=other, num_workers=0)
    ref = load_features(feats_dir)
    by_path = dict(zip(ref.table.path, ref.embeddings, strict=True))
    np.testing.assert_allclose(fresh.embeddings, [by_path[p] for p in fresh.table.path], atol=2e-3)
    embed_dataset(synth_small, feats_dir, ExtractorSpec(backbone="efficientnet_lite0", weights=OFFLINE_LITE0, size=64),
                  num_workers=0, force=True)
    rebuilt = split_outputs(model, "test", num_workers=0)  # the cache no longer matches: not used
    np.testing.assert_allclose(rebuilt.embeddings, [by_path[p] for p in rebuilt.table.path], atol=2e-3)


def test_undecodable_images_are_left_out_and_ranked_last(cache, tmp_path):
    feats_dir = tmp_path / "feats"
    shutil.copytree(cache, feats_dir)
    feats = load_features(feats_dir)
    test_row = int(np.flatnonzero(feats.mask(split="test"))[0])
    train_row = 0
    for row in (train_row, test_row):  # what a failed decode leaves in a shard: a NaN row
        k, i = divmod(row, feats.meta["layout"]["shard_size"])
        a = np.load(shard_path(feats_dir, k))
        a[i] = np.nan
        np.save(shard_path(feats_dir, k), a)
    feats = load_features(feats_dir)
    assert not feats.table.ok[train_row] and not feats.table.ok[test_row]
    model = fit_classic(feats, "logreg")
    assert model.card.dataset["train_images"] == int(feats.mask(split="train").sum()) - 1
    run = save_classic(model, tmp_path / "run").root
    out = split_outputs(load_model(run), "test")
    assert np.isnan(out.embeddings[0]).all() and not np.isnan(out.embeddings[1:]).any()
    (res,) = evaluate_run(run, n_boot=0)
    preds = pd.read_csv(res.out_dir / "predictions.csv")
    first = preds.set_index("image").loc[feats.table.path[test_row]]
    assert not first["correct@1"] and first["rank"] == len(feats.class_ids)  # ties: ranked last


def test_bad_input_gives_clear_errors(cache, tmp_path):
    with pytest.raises(H2FError, match="feature cache not found"):
        load_features(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    (broken / "meta.json").write_text("{not json")
    with pytest.raises(H2FError, match="metadata is unreadable"):
        load_features(broken)
    shutil.rmtree(broken)
    shutil.copytree(cache, broken)
    shard_path(broken, 0).write_bytes(b"garbage")
    with pytest.raises(H2FError, match=r"shards/00000.npy: embedding shard is damaged"):
        load_features(broken)
    shard_path(broken, 0).unlink()
    with pytest.raises(H2FError, match="incomplete"):
        fit_classic(broken, "logreg")
    (broken / "rows.parquet").write_bytes(b"garbage")
    with pytest.raises(H2FError, match="cannot read the image table"):
        load_features(broken)
    feats = load_features(cache)
    with pytest.raises(H2FError, match="unknown classifier 'forest'"):
        fit_classic(feats, "forest")
    with pytest.raises(H2FError, match="unknown option 'k' for logreg"):
        fit_classic(feats, "logreg", {"k": 3})
    with pytest.raises(H2FError, match="unknown alignment"):
        fit_classic(feats, "ncm", align="magic")
    model = fit_classic(feats, "ncm")
    with pytest.raises(H2FError, match=r"features must have shape \[N, 1280\]"):
        model.scores(np.zeros((2, 64)))
    run = save_classic(model, tmp_path / "run").root
    with pytest.raises(H2FError, match="already holds a model"):
        save_classic(model, run)
    (run / "model.joblib").write_bytes(b"garbage")
    with pytest.raises(H2FError, match="weights file changed since the model card was written"):
        load_classic(run)
    with pytest.raises(H2FError, match="model_card.json is missing"):
        load_classic(tmp_path)


def test_cli_fit_classic(cache, tmp_path, h2f_main, capsys):
    run = tmp_path / "run"
    assert (
        h2f_main(
            "fit-classic",
            str(cache),
            "--classifier",
            "knn",
            "-o",
            "k=3",
            "--align",
            "standardize",
            "--out",
            str(run),
            "--val-field-fraction",
            "0.3",
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "knn (k=3; align standardize)" in text and "validation (" in text and "run written to" in text
    card = json.loads((run / "model_card.json").read_text())
    assert card["model"]["options"] == {"k": 3} and card["model"]["align"] == "standardize"
    assert h2f_main("fit-classic", str(cache), "--classifier", "forest", "--out", str(tmp_path / "r2")) == 2
    err = capsys.readouterr().err
    assert "unknown classifier 'forest'" in err and "Traceback" not in err
    assert h2f_main("fit-classic", str(tmp_path / "missing"), "--out", str(tmp_path / "r3")) == 2
    assert "feature cache not found" in capsys.readouterr().err
    assert h2f_main("fit-classic", str(cache), "-o", "C", "--out", str(tmp_path / "r4")) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
