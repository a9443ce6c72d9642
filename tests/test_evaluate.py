"""Evaluation end to end on a real tiny run: artefacts, both modes, prototypes, unlabelled tests, compare, t-SNE,
report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from herbarium2field.config import InferenceConfig
from herbarium2field.errors import H2FError
from herbarium2field.evaluation.compare import compare
from herbarium2field.evaluation.evaluate import evaluate_run
from herbarium2field.evaluation.outputs import split_outputs
from herbarium2field.evaluation.report import build_report
from herbarium2field.evaluation.tsne_runs import tsne_runs
from herbarium2field.run.artefacts import ValidationSet, load_class_means
from herbarium2field.run.card import read_card
from herbarium2field.run.finalize import choose_inference
from herbarium2field.run.load import load_model
from herbarium2field.scoring.prototypes import ClassMeans, build_prototypes, calibrate_shift, prototype_scores


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A private copy, so tests that write into the run do not interfere."""
    dst = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, dst)
    return dst


def test_both_modes_write_every_artefact(run):
    results = evaluate_run(run, mode="both", n_boot=200)
    assert [r.mode for r in results] == ["classifier", "prototype-both"]
    for r in results:
        for f in ("metrics.json", "per_class.csv", "predictions.csv", "confusions.csv", "confusion.png", "report.md"):
            assert (r.out_dir / f).is_file(), f
        m = json.loads((r.out_dir / "metrics.json").read_text())
        groups = m["groups"]
        assert groups["overall"]["n"] == groups["with_pairs"]["n"] + groups["without_pairs"]["n"] == 12
        lo, hi = groups["overall"]["ci"]["top5"]
        assert lo <= groups["overall"]["top5"] <= hi
        preds = pd.read_csv(r.out_dir / "predictions.csv")
        assert len(preds) == 12 and preds["correct@1"].sum() == round(groups["overall"]["top1"] * 12)


def test_classifier_metrics_match_the_network_outputs(run):
    out = split_outputs(load_model(run), "test")
    (res,) = evaluate_run(run, mode="classifier", n_boot=0)
    top1 = float(np.mean(out.logits.argmax(1) == out.labels))
    assert res.metrics["groups"]["overall"]["top1"] == pytest.approx(top1)
    assert out.with_pairs.sum() == res.metrics["groups"]["with_pairs"]["n"]


def test_validation_split_is_the_runs_own(run):
    (res,) = evaluate_run(run, split="val", n_boot=0)
    card = json.loads((run / "model_card.json").read_text())
    assert res.metrics["groups"]["overall"]["n"] == card["dataset"]["val_images"]


def test_prototypes_by_hand():
    emb = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 1]], dtype=float)
    labels = np.array([0, 0, 1, 1, 2])
    domains = np.array([0, 1, 0, 0, 0])  # class 0 has a sheet and a photo; 1 and 2 sheets only
    herb = build_prototypes(emb, labels, domains, 4, source="herbarium")
    assert np.allclose(herb[0], [1, 0]) and not herb[3].any()  # class 3 has no image: zero row
    shifted = build_prototypes(emb, labels, domains, 4, source="shifted")
    offset = emb[1] / np.linalg.norm(emb[1]) - np.array([1.0, 0.0])
    mean1 = (np.array([0.1, 1]) / np.linalg.norm([0.1, 1]) + np.array([0, 1])) / 2
    want = mean1 / np.linalg.norm(mean1) + offset
    assert np.allclose(shifted[1], want / np.linalg.norm(want))
    scores = prototype_scores(np.array([[0.0, 1.0]]), herb)
    assert scores[0].argmax() == 1 and scores[0, 3] == -np.inf


def _two_domain_embeddings(offset: float, rng: np.random.Generator):
    """8 species on their own axes; field photos are the sheets moved along a shared axis by ``offset``.
    Species 0-5 have photos, 6-7 only sheets. Validation: two photos of each paired species."""
    dim, n = 10, 8
    axes = np.eye(dim)[:n]
    photo = axes + offset * np.eye(dim)[n]
    rows = [(axes[c], c, 0) for c in range(n) for _ in range(3)] + [(photo[c], c, 1) for c in range(6) for _ in range(3)]
    emb = np.array([r[0] for r in rows]) + 0.05 * rng.standard_normal((len(rows), dim))
    labels, domains = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    val_labels = np.repeat(np.arange(6), 2)
    val = photo[val_labels] + 0.05 * rng.standard_normal((12, dim))
    return emb, labels, domains, val, val_labels, n


def test_calibration_chooses_the_shift_that_finds_held_out_species():
    rng = np.random.default_rng(0)
    emb, labels, domains, val, val_labels, n = _two_domain_embeddings(2.0, rng)
    choice = calibrate_shift(ClassMeans.from_embeddings(emb, labels, domains, n), val, val_labels)
    assert choice["calibrated"] and choice["held_out_species"] == 6
    grid = {(g["field_weight"], g["shift"]): g for g in choice["grid"]}
    best = grid[(choice["field_weight"], choice["shift"])]
    assert best["score"] == max(g["score"] for g in choice["grid"])
    assert choice["shift"] > 0 and best["held_out_top1"] > grid[(0.5, 0.0)]["held_out_top1"]
    # No domain gap: every setting ties, and the plain "shifted" defaults are kept.
    emb, labels, domains, val, val_labels, n = _two_domain_embeddings(0.0, rng)
    means = ClassMeans.from_embeddings(emb, labels, domains, n)
    same = calibrate_shift(means, val, val_labels)
    assert (same["field_weight"], same["shift"]) == (0.5, 1.0)
    # Too few paired species with validation photos to hold one out: defaults, flagged.
    few = calibrate_shift(means, val[:2], val_labels[:2])
    assert few["calibrated"] is False and few["held_out_species"] == 1


def test_calibrated_prototypes_on_a_run(run):
    (res,) = evaluate_run(run, mode="prototype", prototype_source="calibrated", n_boot=0)
    assert res.out_dir.name == "test-prototype-calibrated"
    ranking = json.loads((res.out_dir / "metrics.json").read_text())["ranking"]
    assert ranking["prototype_source"] == "shifted" and {"field_weight", "shift", "calibrated"} <= ranking["evidence"].keys()
    assert (ranking["field_weight"], ranking["shift"]) == (ranking["evidence"]["field_weight"], ranking["evidence"]["shift"])


def test_calibrated_prototypes_without_validation_photos_fall_back_to_shifted(run):
    card = read_card(run)
    val = ValidationSet.load(run, card)
    no_photos = val.subset(val.domains == 0)  # held-out sheets only: nothing to calibrate the shift on
    choice = choose_inference(load_class_means(run, card), no_photos,
                              declared=InferenceConfig(mode="prototype", prototype_source="calibrated"))
    assert choice.evidence["calibrated"] is False and "plain 'shifted'" in choice.evidence["note"]
    assert (choice.prototype_source, choice.field_weight, choice.shift) == ("shifted", 0.5, 1.0)


def test_shifted_prototypes_are_used(run):
    (res,) = evaluate_run(run, mode="prototype", prototype_source="shifted", n_boot=0)
    assert res.out_dir.name == "test-prototype-shifted" and res.metrics["groups"]["without_pairs"]["n"] > 0
    with pytest.raises(H2FError, match="prototype source"):
        evaluate_run(run, mode="prototype", prototype_source="nearest", n_boot=0)


def test_tta_is_measured_separately(run):
    (res,) = evaluate_run(run, tta="flip", n_boot=0)
    assert res.out_dir.name == "test-classifier-tta-flip" and res.metrics["tta"] == "flip"


def test_unlabelled_test_set_gives_predictions_only(run, synth_small, tmp_path):
    data = tmp_path / "unlabelled"
    shutil.copytree(synth_small, data)
    (data / "list" / "groundtruth.txt").unlink()
    (res,) = evaluate_run(run, data=data, n_boot=0)
    assert res.metrics is None
    assert "no ground truth" in (res.out_dir / "report.md").read_text()
    assert len(pd.read_csv(res.out_dir / "predictions.csv")) == 12


def test_compare_tsne_and_report(run, tmp_path):
    evaluate_run(run, mode="both", n_boot=100)
    table, md, png = compare([run], tmp_path / "cmp")
    assert len(table) == 2 and "prototype-both" in md and png.stat().st_size > 10_000
    res = tsne_runs([run], tmp_path / "tsne", split="all", perplexity=10)
    (numbers,) = res["numbers"]["runs"]
    assert numbers["points"] > 50 and numbers["domain_mixing"] is not None
    assert len(pd.read_csv(res["csv"])) == numbers["points"]
    md_path, html_path = build_report(run)
    html = html_path.read_text()
    assert "data:image/png;base64," in html and 'src="figures/' not in html
    assert "without pairs" in md_path.read_text()


def test_a_run_that_chose_a_prototype_ranking_itself(run, tmp_path):
    """``inference.mode: auto`` may pick a prototype ranking (labelled ``auto-prototype-<source>``): evaluation
    uses it by default, pairs it with the classifier for ``--mode both``, reuses its chosen weights when the
    same source is asked for, and compare/report read its folder. (A label parsing bug once made every such
    run fail with "unknown prototype source 'prototype-shifted'".)"""
    from herbarium2field.run.artefacts import InferenceChoice

    card = read_card(run)
    own = InferenceChoice.load(run, card)
    chosen = InferenceChoice(mode="prototype", prototype_source="shifted", field_weight=0.3, shift=0.8,
                             scale=own.scale, label="auto-prototype-shifted", declared=own.declared,
                             evidence={"rule": "written by this test"})
    chosen.save(run, card)
    (res,) = evaluate_run(run, n_boot=0)
    assert res.out_dir.name == "test-auto-prototype-shifted" and res.metrics["groups"]["overall"]["n"] == 12
    both = evaluate_run(run, mode="both", n_boot=0)
    assert [r.mode for r in both] == ["classifier", "auto-prototype-shifted"]
    (same,) = evaluate_run(run, mode="prototype", prototype_source="shifted", n_boot=0)
    assert same.mode == "auto-prototype-shifted"  # the run's own weights (0.3, 0.8), not the defaults
    (plain,) = evaluate_run(run, mode="prototype", prototype_source="both", n_boot=0)
    assert plain.mode == "prototype-both"
    table, md, _ = compare([run], tmp_path / "cmp")
    assert {"classifier", "auto-prototype-shifted", "prototype-both"} <= set(table["mode"])
    md_path, _ = build_report(run)
    assert "auto-prototype-shifted" in md_path.read_text()


def test_bad_run_directory(tmp_path, run):
    with pytest.raises(H2FError, match="model_card.json"):
        evaluate_run(tmp_path)
    with pytest.raises(H2FError, match="unknown mode 'knn'"):
        evaluate_run(run, mode="knn")


def test_unreadable_test_image_is_named_not_replaced(run, synth_small, tmp_path):
    data = tmp_path / "broken"
    shutil.copytree(synth_small, data)
    victim = sorted((data / "test").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(H2FError, match=rf"1 image\(s\) could not be read:\n  test/{victim.name} \(listed at .*test.txt:\d+\)"):
        evaluate_run(run, data=data, n_boot=0)
