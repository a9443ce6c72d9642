"""Leave-species-out on real photos and the ingredients aimed at herbarium-only species: fold logic, reserved
places, sheet views, greyscale input, genus sharing, the frozen recipe and the LSO ablation cell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from herbarium2field.config import load_config
from herbarium2field.data.manifest import read_dataset
from herbarium2field.data.sheet_views import SheetViews, to_grey
from herbarium2field.data.transforms import Preprocessing, eval_transform
from herbarium2field.experiments.ablation import run_plan, write_results
from herbarium2field.experiments.lso import make_folds, species_folds, write_fold
from herbarium2field.experiments.plan import load_plan
from herbarium2field.models.extractor import GreyscaleExtractor
from herbarium2field.scoring.reserve import reserved_keys, reserved_of, view_scores
from herbarium2field.scoring.taxonomy import Taxonomy, lift_congeners


def test_folds_on_the_real_sample_score_every_photo_once_and_never_train_on_a_held_out_one(aml_sample, tmp_path):
    ds = read_dataset(aml_sample)
    folds = make_folds(ds, k=3, seed=0)
    held = [c for f in folds for c in f.held_out]
    assert sorted(held) == sorted(ds.with_pairs) and len(set(held)) == 15  # a partition of the paired species
    t = ds.table
    photos = t[(t.domain == "field") & t.class_id.isin(ds.with_pairs)]
    queries = pd.concat([f.queries.assign(fold=f.index) for f in folds])
    assert not queries.duplicated(["path", "role"]).any()  # every photo scored once in each role it plays
    twice = queries.path.value_counts()
    assert set(twice[twice == 2].index) == set(ds.split("test").path) and twice.max() == 2  # test photos: both roles
    assert set(queries[queries.role == "held_out"].path) == set(photos.path) and len(photos) == 121
    with_pairs = queries[queries.role == "with_pairs"]
    assert set(with_pairs.path) == set(ds.split("test").path) and len(with_pairs) == 32
    for f in folds:
        assert not f.train[(f.train.domain == "field") & f.train.class_id.isin(f.held_out)].shape[0]
        own = f.queries[f.queries.role == "with_pairs"]
        assert not own.class_id.isin(f.held_out).any()  # a with-pairs photo is never of a held-out species
        out = write_fold(ds, f, tmp_path / f"fold{f.index}")
        fd = read_dataset(out)
        assert fd.errors == [] and fd.with_pairs == set(ds.with_pairs) - set(f.held_out)
        assert not set(fd.split("train").path) & set(f.queries.path)  # nothing scored reaches training
        assert sorted(fd.split("test").path) == sorted(f.queries.path)
    assert species_folds(ds.with_pairs, 3, 0) == species_folds(ds.with_pairs, 3, 0)  # seeded
    assert species_folds(ds.with_pairs, 3, 1) != species_folds(ds.with_pairs, 3, 0)


def test_test_photos_of_species_without_pairs_are_scored_once_in_some_fold(synth_small):
    ds = read_dataset(synth_small)
    folds = make_folds(ds, k=2, seed=0)
    natural = set(ds.split("test").loc[~ds.split("test").class_id.isin(ds.with_pairs), "path"])
    scored = [p for f in folds for p in f.queries.loc[f.queries.role == "without_pairs", "path"]]
    assert natural and sorted(scored) == sorted(natural)
    with pytest.raises(Exception, match="2 <= k"):
        make_folds(ds, k=len(ds.with_pairs) + 1)


def test_reserved_places_keep_the_head_and_fill_the_rest_from_the_sheets():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3]])
    herb_only = np.array([False] * 5 + [True] * 3)
    branch = np.array([[0.9, 0, 0, 0, 0, 0.1, 0.7, 0.3]])  # a paired species' sheet match is never used
    keys = reserved_keys(scores, branch, herb_only, k=2)
    order = np.argsort(-keys[0]).tolist()
    assert order[:5] == [0, 1, 2, 6, 7] and order[5:] == [3, 4, 5]  # head of 3, then herbarium-only by sheets
    assert reserved_of(keys, scores)[0].tolist() == [False] * 6 + [True, True]
    np.testing.assert_array_equal(np.argsort(-reserved_keys(scores, branch, herb_only, k=0)[0]), np.arange(8))
    # a herbarium-only species already in the head is not placed twice
    scores2 = np.array([[5.0, 0.1, 0.1, 0.1, 0.1, 4.0, 0.2, 0.3]])
    order2 = np.argsort(-reserved_keys(scores2, branch, herb_only, k=2)[0], kind="stable").tolist()
    assert order2 == [0, 5, 7, 6, 1, 2, 3, 4]  # head 0, 5, 7; the one herbarium-only left (6); then the rest


def test_view_scores_take_each_species_best_view():
    views = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    owner = np.array([0, 0, 2])
    s = view_scores(np.array([[0.0, 1.0, 0.0]]), views, owner, 4)
    assert s[0, 0] == pytest.approx(1.0) and s[0, 2] == pytest.approx(0.0) and s[0, 1] == -np.inf


def test_sheet_views_are_the_whole_sheet_and_overlapping_squares():
    tall = Image.new("RGB", (300, 700), (200, 180, 150))
    whole = SheetViews(views="whole").cut(tall, 64)
    halves = SheetViews(views="halves").cut(tall, 64)
    assert len(whole) == 1 and len(halves) == 1 + 4 and all(v.size == (64, 64) for v in halves)
    wide = Image.new("RGB", (700, 300))
    assert len(SheetViews().cut(wide, 32)) == 1 + 4
    square = Image.new("RGB", (300, 300))
    assert len(SheetViews().cut(square, 32)) == 2
    grey = SheetViews(colour="grey", erase=False).prepare(Image.new("RGB", (10, 10), (200, 100, 50)))
    px = grey.getpixel((0, 0))
    assert px[0] == px[1] == px[2]
    with pytest.raises(Exception, match="colour"):
        SheetViews(colour="sepia")


def test_the_grey_branch_sees_the_photo_as_greyscale_first_would():
    pre = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))

    class Identity:
        def __init__(self) -> None:
            self.pre = pre

        def __call__(self, x):  # type: ignore[no-untyped-def]
            return x.flatten(1).numpy(), None

    grey = GreyscaleExtractor(Identity())  # type: ignore[arg-type]
    got = grey.grey(eval_transform(pre)(img)[None])
    want = eval_transform(pre)(to_grey(img))[None]
    diff = torch.abs(got - want)  # on pure noise, the worst case: PIL rounds luma to 8 bits and clips the
    assert diff.mean() < 0.005 and diff.max() < 0.05  # bicubic overshoot per channel; the tensor does neither


def test_greyscale_input_is_recorded_and_applied():
    pre = Preprocessing(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), grey=True)
    assert Preprocessing.from_dict(pre.to_dict()).grey and "grey" not in Preprocessing(16, (0, 0, 0), (1, 1, 1)).to_dict()
    x = eval_transform(pre)(Image.new("RGB", (20, 20), (250, 10, 10)))
    assert torch.allclose(x[0], x[1]) and torch.allclose(x[1], x[2])


def test_genus_sharing_lifts_herbarium_only_congeners():
    tax = Taxonomy.from_species(["Aus one", "Aus two", "Bus three", "Cus four"])
    lp = np.log(np.array([[0.90, 0.001, 0.098, 0.001]]))
    herb_only = np.array([False, True, False, True])
    out = np.exp(lift_congeners(lp, tax, herb_only, margin=0.7))
    assert out.sum() == pytest.approx(1.0)
    assert out[0, 1] == pytest.approx(out[0, 0] * np.exp(-0.7), rel=1e-6)  # Aus two follows Aus one
    assert out[0, 3] < out[0, 2] and np.argmax(out) == 0  # Cus has no congener with photos: unchanged


@pytest.fixture(scope="module")
def lso_plan(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("lso")
    plan = {
        "benchmarks": {"tiny_lso": {"kind": "lso", "config": "base.yaml", "params": {"root": str(synth_small), "k": 2}}},
        "variants": {
            "frozen_logreg": {"overrides": ["recipe=frozen", "frozen.classifier=logreg", "inference.mode=classifier"],
                              "description": "frozen"},
            "frozen_reserve": {"reuse": "frozen_logreg", "inference": {"reserve": 2}, "description": "reserved"},
        },
        "verdict": {"candidate": "frozen_reserve", "baselines": ["frozen_logreg"]},
    }
    (base / "base.yaml").write_text(yaml.safe_dump({
        "name": "base", "seed": 0,
        "data": {"image_size": 64, "num_workers": 0, "val_field_fraction": 0.3},
        "model": {"backbone": "tf_efficientnet_lite0", "weights": "efficientnet_lite0:offline"}}))
    (base / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return base / "plan.yaml", base / "work"


def test_an_lso_benchmark_pools_its_folds_and_gives_a_verdict(lso_plan, synth_small):
    plan_file, work = lso_plan
    plan = load_plan(plan_file)
    rows = run_plan(plan, work, n_boot=50, log=lambda _: None)
    assert [r["variant"] for r in rows] == ["frozen_logreg", "frozen_reserve"]
    ds = read_dataset(synth_small)
    photos = ds.table[(ds.table.domain == "field") & ds.table.class_id.isin(ds.with_pairs)]
    for r in rows:
        g = r["metrics"]["groups"]
        natural = ds.split("test")[~ds.split("test").class_id.isin(ds.with_pairs)]
        assert g["without_pairs"]["n"] == len(photos) + len(natural)
        assert g["with_pairs"]["n"] == len(ds.split("test")) - len(natural)
        assert r["trainings"] == 2 and r["selection_metrics"]["groups"]["overall"]["n"] > 0
        hits = pd.read_csv(work / r["hits"])
        assert not hits.duplicated(["path", "fold"]).any() and set(hits.fold) == {0, 1}
        sel = pd.read_csv(work / "runs" / "tiny_lso" / f"{r['variant']}.lso-selection.csv")
        assert not sel.path.isin(ds.split("test").path).any()  # no test photo guides a choice
    base, cand = (pd.read_csv(work / r["hits"]).set_index(["path", "fold"]) for r in rows)
    assert (base["rank"] == 1).equals(cand["rank"] == 1)  # reserved places never change the top-1 answer
    features = list((work / "features" / "tiny_lso").iterdir())
    assert len(features) == 1  # one embedding cache for both folds and both variants
    md = write_results(rows, plan, work / "out.md", work=work, n_boot=50).read_text()
    assert "### tiny_lso" in md and "frozen_reserve − frozen_logreg" in md
    verdict = json.loads((work / "out_verdict.json").read_text())
    wo = next(v for v in verdict if v["group"] == "without_pairs")
    assert wo["frozen_logreg"]["diff"] == 0.0  # top-1 unchanged, by construction
    assert set(wo) >= {"frozen_logreg_top5", "candidate_top5"}
    assert all(r["commit"] for r in rows)  # which code measured each cell
    sel_n = rows[0]["selection_metrics"]["groups"]
    assert f"Selection photos (no test photo; the recommended recipe is chosen on these): {sel_n['without_pairs']['n']}" in md
    assert "| frozen_reserve |" in md and "†" not in md
    (work / rows[1]["hits"]).unlink()  # a cell whose per-photo answers are gone: marked, and left out of verdicts
    md = write_results(rows, plan, work / "out2.md", work=work, n_boot=50).read_text()
    assert "| frozen_reserve † |" in md and "| frozen_logreg |" in md and "not re-run since" in md
    assert json.loads((work / "out2_verdict.json").read_text()) == []


def test_frozen_recipe_trains_by_config_and_answers_with_reserved_places(synth_small, tmp_path, monkeypatch):
    from herbarium2field.features.recipe import train_recipe
    from herbarium2field.identify.service import Identifier
    from herbarium2field.run.load import load_model

    monkeypatch.setenv("H2F_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [f"data.root={synth_small}", "name=frozen", "recipe=frozen", "data.image_size=64",
                             "data.num_workers=0", "model.backbone=tf_efficientnet_lite0",
                             "model.weights=efficientnet_lite0:offline", "inference.reserve=2",
                             "inference.mode=classifier", "data.val_field_fraction=0.3"])
    paths = train_recipe(cfg, progress=False, runs_root=tmp_path / "runs")
    card = json.loads(paths.card.read_text())
    assert card["kind"] == "classic" and card["model"]["classifier"] == "logreg" and paths.config.is_file()
    choice = json.loads(paths.inference.read_text())
    assert choice["reserve"] == 2 and choice["branch"]["views"] == "halves"
    model = load_model(paths.root)
    assert model.reserve == 2 and model.branch is not None and len(model.branch.views) > len(set(model.branch.view_class))
    photo = Image.open(sorted((synth_small / "test").glob("*.jpg"))[0])
    ident = Identifier(paths.root, model=model, gallery=False)
    ans = ident.identify([photo])
    reserved = [r for r in ans["results"] if r["reserved"]]
    assert len(reserved) <= 2 and all(not r["with_pairs"] for r in reserved)
    assert all(r["sheet_match"] is not None for r in reserved)
    top = sorted(ans["results"], key=lambda r: -r["score"])[0]
    assert ans["results"][0]["class_id"] == top["class_id"]  # the top answer is the classifier's


def _selection_file(work: Path, variant: str, ranks: dict[str, list[int]]) -> dict:
    """One variant's selection hits (``{group: ranks}``) as the LSO cell writes them, and its ablation row."""
    rows = [{"path": f"{g}/{i}.jpg", "fold": 0, "group": g, "class_id": "1", "rank": r}
            for g, rs in ranks.items() for i, r in enumerate(rs)]
    d = work / "runs" / "real"
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(d / f"{variant}.lso-selection.csv", index=False)
    wo = ranks["without_pairs"]
    return {"benchmark": "real", "variant": variant, "train_minutes": 1.0,
            "selection_metrics": {"groups": {"without_pairs": {"top5": float(np.mean(np.array(wo) <= 5))}}}}


def test_the_written_rule_recommends_only_a_recipe_that_beats_every_baseline_where_it_must(tmp_path):
    from herbarium2field.experiments.recommend import recommend

    wp_good, wo_none = [1] * 30 + [8] * 10, [40] * 60
    rows = [
        _selection_file(tmp_path, "base_a", {"with_pairs": wp_good, "without_pairs": wo_none}),
        _selection_file(tmp_path, "base_b", {"with_pairs": wp_good, "without_pairs": [3] * 6 + [40] * 54}),
        # lifts herbarium-only species and keeps the species with photos: eligible
        _selection_file(tmp_path, "lift", {"with_pairs": wp_good, "without_pairs": [2] * 24 + [40] * 36}),
        # lifts them further but loses the species with photos: not eligible
        _selection_file(tmp_path, "greedy", {"with_pairs": [9] * 40, "without_pairs": [2] * 40 + [40] * 20}),
        # no better than base_b on herbarium-only species: not eligible
        _selection_file(tmp_path, "same", {"with_pairs": wp_good, "without_pairs": [3] * 6 + [40] * 54}),
    ]
    res = recommend(rows, tmp_path, benchmark="real", baselines=["base_a", "base_b"], n_boot=300)
    eligible = {c["variant"]: c["eligible"] for c in res["candidates"]}
    assert eligible == {"lift": True, "greedy": False, "same": False}
    assert res["recommended"] == "lift"
    assert recommend(rows, tmp_path, benchmark="real", baselines=["base_a", "missing"])["recommended"] is None
