"""Whole collections (`h2f predict`), PlantCLEF run files, genus answers and checklists."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from herbarium2field.data.collection import read_collection
from herbarium2field.data.runfile import read_run_file
from herbarium2field.errors import H2FError
from herbarium2field.evaluation.evaluate import evaluate_run
from herbarium2field.evaluation.runfile import evaluate_run_file
from herbarium2field.identify.checklist import read_checklist
from herbarium2field.identify.predict import predict_collection
from herbarium2field.identify.service import Identifier
from herbarium2field.run.card import read_card
from herbarium2field.scoring.taxonomy import Taxonomy, genus_of
from tests.test_identify import h2f, test_photos


def photo_folder(base: Path, per_species: int) -> Path:
    """``10 * per_species`` synthetic field photos in one folder, and a few files that are not photos."""
    from herbarium2field.data.synth.generate import generate_dataset

    root = base / "data"
    generate_dataset(root, species=10, min_images=2, max_images=3, test_per_species=per_species, size=64, seed=5,
                     workers=2)
    folder = root / "test"
    assert len(list(folder.glob("*.jpg"))) == 10 * per_species
    (folder / "notes.txt").write_text("field notes, not a photo\n")
    (folder / "broken.jpg").write_bytes((next(folder.glob("*.jpg"))).read_bytes()[:300])  # truncated JPEG
    return folder


def killed_prediction_resumes(run: Path, folder: Path, photos: int, chunk: int, tmp_path: Path) -> None:
    """``h2f predict`` killed (SIGKILL) once two chunks are on disk, then run again: it keeps those chunks and
    writes the same bytes as an uninterrupted run."""
    chunks = -(-(photos + 1) // chunk)  # (+ the truncated JPEG, which is read and fails)
    args = [str(run), str(folder), "--chunk-size", str(chunk), "--workers", "2", "--backend", "torch"]
    full = h2f("predict", *args, "--out", str(tmp_path / "full.csv"))
    assert full.returncode == 0, full.stderr
    out = tmp_path / "killed.csv"
    proc = subprocess.Popen([sys.executable, "-m", "herbarium2field", "predict", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out.with_name(out.name + ".parts")
    deadline = time.time() + 600
    while time.time() < deadline and len(list(parts.glob("chunk-*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("chunk-*.parquet")))
    assert 2 <= done < chunks and not out.exists()  # killed part-way, nothing half-written in place
    again = h2f("predict", *args, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert f"{done} chunk(s) kept from before" in " ".join(again.stdout.split())
    assert out.read_bytes() == (tmp_path / "full.csv").read_bytes()
    table = pd.read_csv(out)
    assert len(table) == photos and table.observation.is_unique and not parts.exists()
    problems = pd.read_csv(out.with_name(out.name + ".problems.csv"))
    assert sorted(Path(f).name for f in problems.file) == ["broken.jpg", "notes.txt"]
    assert {"not-an-image", "unreadable"} == set(problems.kind)
    card = read_card(run)
    assert set(table.species1_class_id.astype(str)) <= set(card.class_ids)
    assert (table.score1 >= table.score2).all() and table.genus.notna().all()


def test_killed_prediction_resumes_to_a_byte_identical_file(identify_run, tmp_path):
    """200 photos in chunks of 24 (the 2,000-photo version is marked slow)."""
    killed_prediction_resumes(identify_run, photo_folder(tmp_path / "photos", 20), 200, 24, tmp_path)


@pytest.mark.slow
def test_killed_prediction_of_2000_photos_resumes_to_a_byte_identical_file(identify_run, tmp_path):
    killed_prediction_resumes(identify_run, photo_folder(tmp_path / "photos", 200), 2000, 256, tmp_path)


def test_an_unfinished_prediction_made_differently_is_not_mixed_in(identify_run, synth_small, tmp_path):
    out = tmp_path / "names.csv"
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    (parts / "meta.json").write_text(json.dumps({"format": 1, "data": "other", "model": {}, "options": {}}))
    with pytest.raises(H2FError, match="another model, input or options"):
        predict_collection(identify_run, synth_small / "test", out, num_workers=0, progress=False)
    rep = predict_collection(identify_run, synth_small / "test", out, num_workers=0, progress=False, force=True)
    assert rep.written == 12 and out.is_file()


def test_observations_from_a_csv_combine_their_photos(identify_run, synth_small, tmp_path):
    photos = test_photos(synth_small, 4)
    csv = tmp_path / "plants.csv"
    rows = ["path,plant", *(f"{p},A" for p in photos[:2]), *(f"{p},B" for p in photos[2:]), "missing.jpg,C"]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "plants.parquet"
    rep = predict_collection(identify_run, csv, out, group_by="plant", num_workers=0, progress=False)
    table = pd.read_parquet(out)
    assert table.observation.tolist() == ["A", "B"] and table.photos.tolist() == [2, 2]
    ident = Identifier(identify_run)
    from herbarium2field.data.images import load_rgb

    want = ident.identify([load_rgb(p, min_side=ident.min_side) for p in photos[:2]], top_k=5)
    assert table.species1_class_id.astype(str).iloc[0] == want["results"][0]["class_id"]
    assert table.score1.iloc[0] == pytest.approx(want["results"][0]["score"], abs=1e-4)
    problems = pd.read_csv(rep.problems_file)
    assert problems.kind.tolist() == ["missing-image"] and problems.line.tolist() == [6]
    with pytest.raises(H2FError, match="no column 'site'"):
        read_collection(csv, group_by="site")


def test_a_list_and_a_csv_name_each_left_out_photo_with_its_line(tmp_path):
    """data/collection.py directly: a text list and a CSV keep their order and name every photo they leave
    out (file and line); an input they cannot read at all is one error naming it."""
    from tests.conftest import write_jpeg

    a, b = write_jpeg(tmp_path / "a.jpg"), write_jpeg(tmp_path / "sub" / "b.jpg", (10, 20, 30))
    (tmp_path / "notes.jpg").write_text("not a photo")
    lst = tmp_path / "photos.txt"
    lst.write_text("# field trip\nsub/b.jpg\n\na.jpg\nsub/b.jpg\nmissing.jpg\nnotes.jpg\n")
    col = read_collection(lst)
    assert col.kind == "list" and col.table.path.tolist() == [str(b.resolve()), str(a.resolve())]
    assert col.table.observation.tolist() == ["sub/b", "a"] and col.table.line.tolist() == [2, 4]
    assert [(p.kind, p.path, p.line) for p in col.problems] == [
        ("duplicate", str(lst), 5), ("missing-image", str(lst), 6), ("not-an-image", str(lst), 7)]
    table = tmp_path / "plants.csv"
    table.write_text("observation,path\nplant1,a.jpg\nplant1,sub/b.jpg\n,a.jpg\nplant2\nplant3,notes.jpg\n")
    col = read_collection(table)
    assert col.kind == "csv" and col.observations == ["plant1"] and col.table.line.tolist() == [2, 3]
    assert [(p.kind, p.line) for p in col.problems] == [("malformed", 4), ("malformed", 5), ("not-an-image", 6)]
    assert "empty 'observation'" in col.problems[0].message and "expected 2 columns, got 1" in col.problems[1].message
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "latin1.txt").write_bytes("f\xf6to.jpg\n".encode("latin-1"))
    for source, group_by, says in [(tmp_path / "nowhere", None, "no such folder or file"),
                                   (tmp_path, "plant", "--group-by needs a CSV input"),
                                   (lst, "plant", "--group-by needs a CSV input"),
                                   (tmp_path / "empty.csv", None, "the CSV is empty"),
                                   (tmp_path / "latin1.txt", None, "cannot read the list")]:
        with pytest.raises(H2FError, match=says) as err:
            read_collection(source, group_by=group_by)
        assert str(source) in str(err.value)


def test_plantclef_run_file_round_trips_through_evaluate(identify_run, synth_small, tmp_path):
    out = tmp_path / "myteam_run1.txt"
    predict_collection(identify_run, synth_small / "test", out, fmt="plantclef", top_k=4, num_workers=0,
                       progress=False)
    lines = out.read_text().splitlines()
    assert len(lines) == 12 * 4
    for line in lines:  # ObservationId;ClassId;Probability;Rank
        obs, cid, prob, rank = line.split(";")
        assert obs and cid and 0 <= float(prob) <= 1 and 1 <= int(rank) <= 4
    runs = read_run_file(out)
    assert runs.groupby("observation")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4]).all()
    score = evaluate_run_file(out, data=synth_small, n_boot=0)
    (direct,) = evaluate_run(identify_run, n_boot=0)
    for g in ("overall", "with_pairs", "without_pairs"):
        got, want = score.result.metrics["groups"][g], direct.metrics["groups"][g]
        assert got["n"] == want["n"] and got["top1"] == pytest.approx(want["top1"])
        # top-4 listed: MRR counts a true species below rank 4 as 0, the task's rule
        assert got["mrr"] <= want["mrr"] + 1e-9
    assert score.missing_observations == 0 and score.unknown_observations == 0
    bad = tmp_path / "bad.txt"
    bad.write_text("a;b;0.5;1\nbroken line\nc;d;1.5;1\n")
    with pytest.raises(H2FError, match=r"bad.txt:2(.|\n)*bad.txt:3"):
        read_run_file(bad)
    cli = h2f("evaluate", str(out), "--data", str(synth_small), "--n-boot", "0")
    assert cli.returncode == 0 and "run file" in cli.stdout, cli.stderr
    nodata = h2f("evaluate", str(out))
    assert nodata.returncode == 2 and "--data" in nodata.stderr and "Traceback" not in nodata.stderr


def test_genus_scores_sum_their_species_and_appear_in_evaluate(identify_run):
    tax = Taxonomy.from_species(["Euphorbia hirta L.", "Euphorbia prostrata Aiton", "Costus scaber", "12345"])
    assert tax.genera == ("Euphorbia", "Costus", "12345") and genus_of("× Cupressocyparis leylandii") == \
        "× Cupressocyparis"
    gp = tax.genus_probabilities(np.array([[0.3, 0.3, 0.4, 0.0]]))
    np.testing.assert_allclose(gp, [[0.6, 0.4, 0.0]])
    (res,) = evaluate_run(identify_run, n_boot=0)
    genus = res.metrics["genus"]
    assert genus["groups"]["overall"]["n"] == res.metrics["groups"]["overall"]["n"]
    assert genus["groups"]["overall"]["top1"] >= res.metrics["groups"]["overall"]["top1"]  # a genus is never harder
    assert "genus, with pairs" in (res.out_dir / "report.md").read_text()


def test_genus_answer_when_no_species_is_confident(identify_run):
    ident = Identifier(identify_run)
    card = ident.card
    names = list(card.species)
    genus = names[0].split()[0]
    names[1] = f"{genus} alterum L."  # two species of one genus (the synthetic flora has none)
    ident.taxonomy = Taxonomy.from_species(names)
    c = card.num_classes
    probs = np.full(c, 0.02 / (c - 2))
    probs[:2] = 0.49
    ident.calibration = {**(ident.calibration or {}), "n": 10, "threshold": 0.9, "reached": True,
                         "target_precision": 0.9, "precision": 0.9, "coverage": 0.5,
                         "genus": {"n": 10, "threshold": 0.8, "reached": True, "target_precision": 0.9,
                                   "precision": 0.95, "coverage": 0.6}}
    ans = ident.answer(np.ones((1, card.embedding_dim), np.float32), np.log(probs)[None], sheets=0, nearest=0)
    assert ans["confident"] is False and ans["answer"] == {"level": "genus", "name": f"{genus} sp.", "score": 0.98}
    assert ans["genus"]["confident"] and ans["genus"]["species"] == card.class_ids[:2]
    probs[:2] = [0.95, 0.03]  # the species itself is confident: answered at species level
    ans = ident.answer(np.ones((1, card.embedding_dim), np.float32), np.log(probs / probs.sum())[None], sheets=0,
                       nearest=0)
    assert ans["confident"] is True and ans["answer"]["level"] == "species"
    probs = np.full(c, 0.5 / (c - 2))
    probs[:2] = [0.45, 0.05]  # neither the species (0.45) nor the genus (0.50) reaches its threshold
    ans = ident.answer(np.ones((1, card.embedding_dim), np.float32), np.log(probs)[None], sheets=0, nearest=0)
    assert ans["answer"]["level"] == "none" and ans["genus"]["confident"] is False


def test_a_checklist_restricts_and_renormalises(identify_run, synth_small, tmp_path):
    card = read_card(identify_run)
    keep = card.class_ids[:2]
    lst = tmp_path / "flora.txt"
    lst.write_text(f"# our region\n{keep[0]}\n{' '.join(card.species[1].split()[:2])}\n")
    assert np.flatnonzero(read_checklist(lst, card)).tolist() == [0, 1]
    photo = str(test_photos(synth_small, 1)[0])
    res = h2f("identify", str(identify_run), photo, "--json", "--species", str(lst))
    assert res.returncode == 0, res.stderr
    ans = json.loads(res.stdout)
    assert [r["class_id"] for r in ans["results"]] and {r["class_id"] for r in ans["results"]} <= set(keep)
    assert sum(r["score"] for r in ans["results"]) == pytest.approx(1.0, abs=2e-3)
    assert ans["checklist"]["species"] == 2
    bad = tmp_path / "bad.txt"
    bad.write_text("Nonexistus fictus\n")
    res = h2f("identify", str(identify_run), photo, "--species", str(bad))
    assert res.returncode == 2 and "bad.txt:1" in res.stderr and "Traceback" not in res.stderr


def test_a_folder_is_read_by_content_not_names(tmp_path):
    (tmp_path / "a").mkdir()
    from tests.conftest import write_jpeg

    write_jpeg(tmp_path / "a" / "x.jpg")
    write_jpeg(tmp_path / "b.png.txt")  # a JPEG whatever its name says
    (tmp_path / "c.jpg").write_text("<html>not found</html>")
    (tmp_path / ".hidden.jpg").write_text("skip me")
    col = read_collection(tmp_path)
    assert col.table.observation.tolist() == ["a/x", "b.png"]
    assert [(Path(p.path).name, p.kind) for p in col.problems] == [("c.jpg", "not-an-image")]
    os.remove(tmp_path / "c.jpg")
    shutil.rmtree(tmp_path / "a")
    assert read_collection(tmp_path).table.observation.tolist() == ["b.png"]


def test_an_unlabelled_test_set_is_mapped_and_reported(tiny_run, synth_small, tmp_path):
    from herbarium2field.evaluation.report import build_report
    from herbarium2field.evaluation.tsne_runs import tsne_runs

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data = tmp_path / "unlabelled"
    shutil.copytree(synth_small, data)
    (data / "list" / "groundtruth.txt").unlink()
    res = tsne_runs([run], tmp_path / "tsne", split="all", perplexity=5, data=str(data))
    points = pd.read_csv(res["csv"], dtype={"class_id": str})
    assert (points.class_id == "unlabelled").sum() == 12 and res["numbers"]["runs"][0]["silhouette"] is not None
    md, _ = build_report(run, data=data)
    text = md.read_text()
    assert "no ground truth" in text and "t-SNE" in text


def test_the_genus_head_learns_genera_from_species_labels():
    """Species 0 and 1 share genus 0: the genus loss must teach one target for both, which it cannot do when the
    mapping is ignored (species 1 would stay a separate target)."""
    import torch

    from herbarium2field.config import ExperimentConfig
    from herbarium2field.models.domain_losses import GenusLoss, build_extra_losses

    cfg = ExperimentConfig.model_validate({"train": {"genus_loss": 0.5}})
    genus_of_class = np.array([0, 0, 1])
    losses = build_extra_losses(cfg, 8, genus_of_class)
    assert isinstance(losses["genus"], GenusLoss) and losses["genus"].weight == 0.5
    assert "genus" not in build_extra_losses(ExperimentConfig(), 8, genus_of_class)
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 3
    labels = torch.arange(3).repeat(20)
    emb = centres[labels] + 0.1 * torch.randn(60, 8)
    head = losses["genus"]
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    first = float(head(emb, labels, torch.zeros(60)))
    for _ in range(200):
        opt.zero_grad()
        loss = head(emb, labels, torch.zeros(60))
        loss.backward()
        opt.step()
    assert float(loss) < 0.05 < first
    pred = head.head(emb).argmax(1)
    assert torch.equal(pred, torch.as_tensor(genus_of_class)[labels])


def test_a_taxonomy_file_names_the_family_in_the_run_and_its_answers(synth_small, tmp_path):
    from PIL import Image

    from herbarium2field.config import load_config
    from herbarium2field.data.manifest import read_dataset
    from herbarium2field.training.train import train
    from tests.conftest import TINY

    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    ds = read_dataset(data)
    genera = sorted({genus_of(n) for n in ds.species.values()})
    (data / "list" / "taxonomy.csv").write_text("genus,family\n" + "".join(f"{g},{g}aceae\n" for g in genera))
    cfg = load_config(None, [f"data.root={data}", "name=fam", *TINY, "train.epochs=1"])
    run = train(cfg, progress=False, runs_root=tmp_path / "runs").root
    card = read_card(run)
    assert card.families == {g: f"{g}aceae" for g in genera}
    shutil.rmtree(data)  # the run answers with the family on its own
    photo = Image.new("RGB", (64, 64), (90, 140, 60))
    ans = Identifier(run, gallery=False).identify([photo], sheets=0, nearest=0)
    assert ans["genus"]["family"] == f"{ans['genus']['name']}aceae"


@pytest.mark.parametrize(("text", "line", "says"), [
    ("name,family\nAus,Ausaceae\n", 1, "needs a header"),
    ("genus,family\nAus,Ausaceae\nBus\n", 3, "expected 2 columns"),
    ("species,family\nAus bus L.,Ausaceae\nAus cus L.,Cusaceae\n", 3, "in Ausaceae on line 2"),
])
def test_a_broken_taxonomy_file_names_its_line(tmp_path, text, line, says):
    from herbarium2field.data.taxonomy_file import read_families

    f = tmp_path / "taxonomy.csv"
    f.write_text(text)
    with pytest.raises(H2FError) as err:
        read_families(f)
    assert err.value.line == line and says in str(err.value) and str(f) in str(err.value)
