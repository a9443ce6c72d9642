"""Every ``h2f`` command end to end, as the console script a user runs (a real subprocess): its exit code, the
files it writes and what is in them; for bad input, the exit code and ONE message naming the file (and line)
with no traceback.

The commands share one small pipeline (module-scoped fixtures): a synthetic dataset with a few unreadable
sheets -> a tiny trained run -> evaluation, index, export, ... and frozen features -> a classic run. Each
test checks one command; a failure upstream shows up as errors in the tests that need its output.

Time: a fresh ``h2f`` process that needs torch spends 10-15 s of CPU (2 slow cores) importing torch,
torchvision, Lightning and scikit-learn before it does anything; a subprocess for each of ~20 such commands
would cost the fast suite minutes. So the pipeline runs twice, by the module-scoped ``cli`` fixture:

- ``cli[in-process]`` (``make test``): the commands that import torch run through the console script's own
  entry point in this process (``h2f_here``: ``cli.main`` with the same argv, exit code and stderr); real
  subprocesses are the commands that start fast (synth, validate, stats, prepare, configs), ``train`` (the run
  everything else uses), ``identify --json`` and a bad config file;
- ``cli[subprocess]`` (``make test-slow``): every command of the pipeline as a real subprocess, ``serve``
  included (``test_every_command_is_run_by_this_file`` checks that each command is called here).

Re-runs and most bad inputs always go through ``h2f_here``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import TINY, h2f_here

#: The installed console script (``h2f``), as a user runs it; ``python -m herbarium2field`` where it is absent.
H2F = [str(Path(sys.executable).with_name("h2f"))] if Path(sys.executable).with_name("h2f").is_file() else [
    sys.executable, "-m", "herbarium2field"]


def h2f(*args: object, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*H2F, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


class CLI:
    """Runs ``h2f`` as ``mode`` says: ``subprocess`` (the console script) or ``in-process`` (``h2f_here``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return (h2f if self.mode == "subprocess" else h2f_here)(*args, env=env)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The command succeeded without a traceback; its standard output."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc.stdout


def user_error(proc: subprocess.CompletedProcess[str], *where: str, code: int = 2) -> str:
    """A user error: exit ``code``, no traceback, one message on stderr (``error: ...``, then only indented
    detail or hint lines) that contains each of ``where`` (the file, ``file:line``, ...)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}\n{out}"
    assert "Traceback" not in out, out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), proc.stderr
    assert all(line.startswith("  ") for line in lines[1:]), proc.stderr  # details of the one message
    for fragment in where:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    return proc.stderr


def usage_error(proc: subprocess.CompletedProcess[str], words: str) -> None:
    """An invalid option: the CLI's usage error (exit 2) that says what is wrong, no traceback. (In this process
    Click names the program after pytest: ``Usage: python -m pytest.h2f export ...``.)"""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert "Usage: " in proc.stderr and f"h2f {proc.args[1]} " in proc.stderr, proc.stderr
    assert words in " ".join(proc.stderr.split()), proc.stderr


def table_rows(text: str) -> dict[str, str]:
    """The rows of a two-column table the CLI printed (``│ key │ value │``), as a mapping."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃|").split("│")]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def list_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_photos(data: Path, n: int | None = None) -> list[Path]:
    return sorted((data / "test").glob("*.jpg"))[:n]


test_photos.__test__ = False  # a helper


# ---- the shared pipeline ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["in-process", pytest.param("subprocess", marks=pytest.mark.slow)])
def cli(request: pytest.FixtureRequest) -> CLI:
    return CLI(request.param)


@pytest.fixture(scope="module")
def work(cli: CLI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline's folder: one per ``cli`` mode (each mode runs the whole pipeline)."""
    return tmp_path_factory.mktemp(f"cli-{cli.mode}")


@pytest.fixture(scope="module")
def env(work: Path) -> dict[str, str]:
    return {"H2F_RUNS": str(work / "runs"), "H2F_CACHE": str(work / "cache")}


#: Sheets made unreadable in the CLI's copy of the dataset: training must swap them, indexing must skip them.
UNREADABLE = 4


@pytest.fixture(scope="module")
def data(synth_small: Path, work: Path) -> tuple[Path, list[str]]:
    """A copy of ``synth_small`` with a few training sheets replaced by non-images (still listed)."""
    root = work / "data"
    shutil.copytree(synth_small, root, ignore=shutil.ignore_patterns(".h2f-cache"))
    sheets = [line.split()[0] for line in list_lines(root / "list" / "train.txt") if "/herbarium/" in line]
    bad = sheets[3::len(sheets) // UNREADABLE][:UNREADABLE]
    for rel in bad:
        (root / rel).write_bytes(b"<html>not a photo</html>")
    return root, bad


@pytest.fixture(scope="module")
def trained(data: tuple[Path, list[str]], env: dict[str, str], work: Path) -> tuple[Path, subprocess.CompletedProcess]:
    root, _ = data
    sets = [a for s in [*TINY, "train.epochs=2", "data.sampler.epoch_size=96"] for a in ("--set", s)]
    proc = h2f("train", "--data", root, "--name", "cli", *sets, env=env)
    return work / "runs" / "cli", proc


@pytest.fixture(scope="module")
def run(trained: tuple[Path, subprocess.CompletedProcess]) -> Path:
    path, proc = trained
    ok(proc)
    return path


@pytest.fixture(scope="module")
def evaluated(run: Path, cli: CLI) -> tuple[Path, str]:
    out = ok(cli("evaluate", run, "--split", "test", "--n-boot", "50", "--workers", "0"))
    return run, out


@pytest.fixture(scope="module")
def indexed(evaluated: tuple[Path, str], cli: CLI) -> tuple[Path, subprocess.CompletedProcess]:
    run, _ = evaluated
    return run, cli("index", run, "--workers", "0", "--batch-size", "16")


@pytest.fixture(scope="module")
def features(data: tuple[Path, list[str]], work: Path, cli: CLI) -> tuple[Path, str]:
    root, _ = data
    out = work / "features"
    proc = cli("embed", root, out, "--backbone", "mobilenetv3_small_050", "--random-init", "--size", "64",
               "--workers", "0", "--batch-size", "16", "--shard-size", "32")
    ok(proc)
    return out, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def classic(features: tuple[Path, str], work: Path, cli: CLI) -> Path:
    folder, _ = features
    ok(cli("fit-classic", folder, "--classifier", "ncm", "--out", work / "runs" / "classic"))
    ok(h2f_here("evaluate", work / "runs" / "classic", "--split", "test", "--n-boot", "50", "--workers", "0"))
    return work / "runs" / "classic"


def eval_dirs(run: Path) -> list[Path]:
    return sorted(p for p in (run / "eval").iterdir() if p.name.startswith("test-"))


# ---- data commands ------------------------------------------------------------------------------------------


def test_synth_writes_the_dataset_it_reports(tmp_path):
    work = tmp_path
    out = work / "synth"
    text = ok(h2f("synth", out, "--species", "4", "--size", "64", "--min-images", "4", "--max-images", "6",
                  "--test-per-species", "1", "--workers", "1", "--seed", "5"))
    lists = out / "list"
    train = list_lines(lists / "train.txt")
    sheets = [line for line in train if line.startswith("train/herbarium/")]
    photos = [line for line in train if line.startswith("train/photo/")]
    with_pairs, without = list_lines(lists / "class_with_pairs.txt"), list_lines(lists / "class_without_pairs.txt")
    species = [line.split(";")[0] for line in list_lines(lists / "species_list.txt")]
    table = table_rows(text)
    assert table["species"] == f"4 ({len(with_pairs)} with pairs, {len(without)} without pairs)"
    assert table["train herbarium sheets"] == str(len(sheets))
    assert table["train field photos"].startswith(f"{len(photos)} (")
    assert table["test field photos"] == "4 (1 per species)"
    assert sorted(with_pairs + without) == sorted(species) and len(species) == 4 and with_pairs and without
    assert {line.split()[1] for line in photos} == set(with_pairs)  # only species with pairs have photos
    assert len(list_lines(lists / "test.txt")) == len(list_lines(lists / "groundtruth.txt")) == 4
    for rel in [line.split()[0] for line in train] + list_lines(lists / "test.txt"):
        with Image.open(out / rel) as im:
            assert im.format == "JPEG" and min(im.size) == 64, rel
    with Image.open(out / "contact_sheet.png") as im:
        assert im.format == "PNG" and im.size[0] > 64
    (work / "notes").mkdir()
    (work / "notes" / "todo.txt").write_text("mine\n")
    err = user_error(h2f_here("synth", work / "notes", "--species", "3"), str(work / "notes"), "not empty")
    assert "hint:" in err and (work / "notes" / "todo.txt").read_text() == "mine\n"  # nothing touched


def test_validate_counts_every_image_and_locates_every_problem(synth_small, make_aml, tmp_path):
    images = len(list_lines(synth_small / "list" / "train.txt")) + len(list_lines(synth_small / "list" / "test.txt"))
    assert f"ok: {images} images usable." in ok(h2f_here("validate", synth_small, "--workers", "1"))
    root = make_aml(train=["train/herbarium/101/1.jpg 101", "train/herbarium/101/2.jpg", "train/photo/101/3.jpg 101",
                           "train/herbarium/202/4.jpg 202", "train/herbarium/202/5.jpg 202"])
    (root / "train" / "photo" / "101" / "3.jpg").unlink()
    (root / "train" / "herbarium" / "202" / "5.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    proc = h2f("validate", root, "--report", tmp_path / "problems.csv", "--workers", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert f"{root}/list/train.txt:2" in proc.stdout and f"{root}/list/train.txt:3" in proc.stdout
    assert "3 error(s)" in proc.stdout
    with (tmp_path / "problems.csv").open() as f:
        rows = {(r["kind"], r["line"]) for r in csv.DictReader(f) if r["severity"] == "error"}
    assert {("malformed", "2"), ("missing-image", "3")} <= rows and len(rows) == 3  # + the unreadable one
    again = h2f_here("validate", root, "--allow-missing", "--workers", "1")
    assert again.returncode == 0 and "3 entr(ies) skipped" in again.stdout


def test_stats_counts_per_class_and_domain(synth_small, tmp_path, make_aml):
    work = tmp_path
    out = work / "stats"
    text = ok(h2f("stats", synth_small, "--out", out))
    counts = pd.read_csv(out / "class_counts.csv", dtype={"class_id": str}).set_index("class_id")
    train = [line.split() for line in list_lines(synth_small / "list" / "train.txt")]
    for cid in counts.index:
        assert counts.loc[cid, "herbarium"] == sum(p.startswith("train/herbarium/") and c == cid for p, c in train)
        assert counts.loc[cid, "field"] == sum(p.startswith("train/photo/") and c == cid for p, c in train)
    assert sorted(counts.index) == sorted(line.split(";")[0] for line in list_lines(synth_small / "list" /
                                                                                    "species_list.txt"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary and "class_counts.csv" in text
    md = (out / "class_counts.md").read_text()
    assert all(f"| {cid} " in md or f"{cid} |" in md for cid in counts.index)
    with Image.open(out / "class_balance.png") as im:
        assert im.format == "PNG"
    root = make_aml(train=["train/herbarium/101/1.jpg 101", "garbage", "train/herbarium/202/4.jpg 202"])
    user_error(h2f_here("stats", root, "--out", work / "stats-bad"), f"{root}/list/train.txt:2", "malformed")
    assert not (work / "stats-bad").exists()


def test_prepare_caches_every_image_at_its_size_and_reuses_it(synth_small, tmp_path, make_aml):
    work = tmp_path
    cache = work / "prepared"
    n = len(list_lines(synth_small / "list" / "train.txt")) + len(list_lines(synth_small / "list" / "test.txt"))
    text = ok(h2f("prepare", synth_small, "--size", "48", "--cache", cache, "--workers", "1"))
    assert f"{n} written" in text and "0 reused" in text and "0 failed" in text
    files = [p for p in cache.rglob("*.jpg")]
    assert len(files) == n
    for p in files[:10]:
        with Image.open(p) as im:
            assert min(im.size) == 48
    again = ok(h2f_here("prepare", synth_small, "--size", "48", "--cache", cache, "--workers", "1"))
    assert "0 written" in again and f"{n} reused" in again
    root = make_aml()
    (root / "train" / "herbarium" / "202" / "5.jpg").write_text("not a photo")
    proc = h2f_here("prepare", root, "--cache", work / "prepared-bad", "--workers", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "train/herbarium/202/5.jpg" in proc.stderr and "could not be cached" in proc.stderr


def test_configs_lists_the_packaged_configs():
    from herbarium2field.config import packaged_configs

    text = ok(h2f("configs"))
    names = packaged_configs()
    assert len(names) >= 7 and all(name in text for name in names)
    assert "recommended_lite0_cpu" in names


# ---- training ---------------------------------------------------------------------------------------------


def test_train_writes_a_complete_run_and_swaps_unreadable_sheets(trained, data):
    path, proc = trained
    text = ok(proc)
    root, bad = data
    assert f"run written to {path}" in " ".join(text.split())
    assert "inference:" in text
    swapped = [rel for rel in bad if f"skipping unreadable image: {root / rel}" in proc.stderr]
    assert swapped, proc.stderr[-3000:]  # the sampler drew some of them: each replaced, named, not fatal
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    assert cfg["name"] == "cli" and cfg["data"]["root"] == str(root) and cfg["train"]["epochs"] == 2
    card = json.loads((path / "model_card.json").read_text())
    species = dict(line.split(";", 1) for line in list_lines(root / "list" / "species_list.txt"))
    assert card["class_ids"] == list(species) and card["species"] == [species[c].strip() for c in card["class_ids"]]
    assert card["with_pairs"] == sorted(list_lines(root / "list" / "class_with_pairs.txt"))
    with (path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["stage"] for r in rows] == ["warmup", "finetune"]
    assert card["validation"]["epochs_run"] == 2
    best = card["validation"]["score"]
    assert best == pytest.approx(max(float(r["val_top1"]) for r in rows), abs=1e-6)
    inference = json.loads((path / "inference.json").read_text())
    assert inference["mode"] in ("classifier", "prototype")
    calibration = json.loads((path / "calibration.json").read_text())
    assert calibration["target_precision"] == 0.9
    split = json.loads((path / "split.json").read_text())
    assert (split["field_fraction"], split["herbarium_fraction"]) == (0.3, 0.1)  # TINY's validation shares
    assert len(split["val_paths"]) == card["dataset"]["val_images"] > 0
    training = {line.split()[0] for line in list_lines(root / "list" / "train.txt")}
    assert {Path(p).relative_to(root).as_posix() if Path(p).is_absolute() else p
            for p in split["val_paths"]} <= training  # validation images are training images


def test_train_input_errors(env, work, data):
    root, _ = data
    bad = work / "bad.yaml"
    bad.write_text("name: bad\ntrain:\n  epochs: 3\n  lr_head: [1e-3\n")
    user_error(h2f("train", bad, "--data", root, env=env), f"{bad}:5", "not valid YAML")
    user_error(h2f_here("train", "--data", root, "--set", "train.epochs=many", env=env), "train.epochs")
    user_error(h2f_here("train", "--data", root, "--set", "trian.epochs=3", env=env), "trian")
    user_error(h2f_here("train", "no_such_config", env=env), "no_such_config", "packaged configs")
    assert not (work / "runs" / "bad").exists()


def test_train_refuses_to_overwrite_a_run(run, env, data):
    root, _ = data
    stamp = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    user_error(h2f_here("train", "--data", root, "--name", "cli", *[a for s in TINY for a in ("--set", s)],
                        env=env), str(run), "--resume")
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp


# ---- evaluation ---------------------------------------------------------------------------------------------


def test_evaluate_writes_metrics_that_match_its_predictions(evaluated, data):
    run, text = evaluated
    root, _ = data
    (ev,) = eval_dirs(run)
    assert f"written to {ev}" in " ".join(text.split())
    metrics = json.loads((ev / "metrics.json").read_text())
    pred = pd.read_csv(ev / "predictions.csv", dtype={"true_class_id": str})
    assert len(pred) == len(list_lines(root / "list" / "test.txt")) == metrics["groups"]["overall"]["n"]
    overall = metrics["groups"]["overall"]
    assert overall["top1"] == pytest.approx(pred["correct@1"].mean())
    assert overall["top5"] == pytest.approx((pred["rank"] <= 5).mean())
    assert overall["mrr"] == pytest.approx((1 / pred["rank"]).mean())
    lo, hi = overall["ci"]["top1"]
    assert lo <= overall["top1"] <= hi
    assert f"{100 * overall['top1']:.1f}" in text  # the printed table shows the same number


def test_evaluate_scores_a_plantclef_run_file(indexed, work, data):
    run, _ = indexed
    root, _ = data
    out = work / "myteam_run1.txt"
    ok(h2f_here("predict", run, root / "test", "--format", "plantclef", "--out", out, "--workers", "0",
                "--top-k", "6"))
    lines = out.read_text().splitlines()
    assert len(lines) == 6 * len(list_lines(root / "list" / "test.txt"))
    assert all(len(line.split(";")) == 4 for line in lines)
    text = ok(h2f_here("evaluate", out, "--data", root, "--n-boot", "0"))
    assert "written to" in text
    bad = work / "broken_run.txt"
    bad.write_text(lines[0] + "\n" + "6;x\n")
    user_error(h2f_here("evaluate", bad, "--data", root), f"{bad.name}:2", "ObservationId;ClassId;Probability;Rank")
    user_error(h2f_here("evaluate", out), str(out), "--data")


def test_tsne_maps_the_runs_side_by_side(run, classic, work, cli):
    out = work / "tsne"
    text = ok(cli("tsne", run, classic, "--split", "test", "--perplexity", "3", "--out", out))
    pngs, tables = list(out.glob("*.png")), list(out.glob("*.csv"))
    assert len(pngs) == 1 and len(tables) == 1
    points = pd.read_csv(tables[0])
    assert len(points) == 2 * len(test_photos(Path(json.loads((run / "model_card.json").read_text())
                                                    ["dataset"]["root"])))
    assert "silhouette" in text and f"{run.name}:" in text and f"{classic.name}:" in text
    user_error(h2f_here("tsne", work / "nowhere"), "nowhere")
    usage_error(h2f_here("tsne", run, "--split", "everything"), "--split must be")


def test_compare_ranks_the_runs_with_their_own_numbers(evaluated, classic, work, cli):
    run, _ = evaluated
    out = work / "comparison"
    ok(cli("compare", run, classic, "--out", out, "--rank-by", "top1_overall"))
    md = (out / "comparison.md").read_text()
    for r in (run, classic):
        (ev,) = eval_dirs(r)
        top1 = json.loads((ev / "metrics.json").read_text())["groups"]["overall"]["top1"]
        row = next(line for line in md.splitlines() if f"| {r.name} " in line or f"{r.name} |" in line)
        assert f"{100 * top1:.1f}" in row, (row, top1)
    assert list(out.glob("*.png"))
    user_error(h2f_here("compare", run, "--out", out, "--split", "val"), "val")


def test_report_is_one_markdown_and_one_self_contained_html(evaluated, work, cli):
    run, _ = evaluated
    text = ok(cli("report", run, "--no-tsne"))
    md, html = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert "report.md" in text and "report.html" in text
    (ev,) = eval_dirs(run)
    top1 = json.loads((ev / "metrics.json").read_text())["groups"]["overall"]["top1"]
    assert f"{100 * top1:.1f}" in md and run.name in md
    assert "<img" in html and 'src="http' not in html and "data:image/png;base64," in html
    user_error(h2f_here("report", work / "nowhere"), "nowhere", "model_card.json")


# ---- identification -------------------------------------------------------------------------------------------


def test_index_builds_the_gallery_once_and_skips_unreadable_sheets(indexed, data):
    run, proc = indexed
    root, bad = data
    text = ok(proc)
    sheets = [line.split()[0] for line in list_lines(root / "list" / "train.txt") if "/herbarium/" in line]
    assert "gallery built" in text and f"{len(sheets) - len(bad)} herbarium sheets" in text
    assert sorted(line.split()[1].rstrip(":") for line in proc.stderr.splitlines() if "skipped" in line) == sorted(bad)
    meta = json.loads((run / "gallery" / "meta.json").read_text())
    assert meta["data"]["images"] == len(sheets) - len(bad)
    again = ok(h2f_here("index", run, "--workers", "0"))
    assert "gallery up to date" in " ".join(again.split())
    user_error(h2f_here("index", run.parent / "nowhere"), "nowhere")


def test_calibrate_sets_the_threshold_from_the_run_alone(indexed, work, cli):
    run, _ = indexed
    copy = work / "calibrated"
    shutil.copytree(run, copy)
    text = ok(cli("calibrate", copy, "--target-precision", "0.5"))
    cal = json.loads((copy / "calibration.json").read_text())
    assert cal["target_precision"] == 0.5 and cal["n"] > 0
    from herbarium2field.scoring.threshold import describe_threshold

    assert describe_threshold(cal) in " ".join(text.split())
    assert "up to date" in ok(h2f_here("calibrate", copy, "--target-precision", "0.5"))
    usage_error(h2f_here("calibrate", copy, "--target-precision", "1.5"), "--target-precision must be in (0, 1]")


def test_identify_names_species_with_their_sheets(indexed, data, work, cli):
    run, _ = indexed
    root, _ = data
    photo = test_photos(root, 1)[0]
    ans = json.loads(ok(h2f("identify", run, photo, "--json", "--top-k", "3", "--sheets", "2")))
    card = json.loads((run / "model_card.json").read_text())
    results = ans["results"]
    assert [r["rank"] for r in results] == [1, 2, 3] and [p["name"] for p in ans["photos"]] == [str(photo)]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert all(r["species"] == card["species"][card["class_ids"].index(r["class_id"])] for r in results)
    assert all(0 < len(r["herbarium"]) <= 2 and {s["class_id"] for s in r["herbarium"]} == {r["class_id"]}
               for r in results)
    plain = ok(h2f_here("identify", run, photo, "--top-k", "3"))
    assert results[0]["species"] in plain
    notes = work / "notes.jpg"
    notes.write_text("field notes, not a photo\n")
    user_error(cli("identify", run, notes), "notes.jpg", "not an image")
    checklist = work / "checklist.txt"
    checklist.write_text(f"{card['class_ids'][0]}\nNonexistus imaginarius\n")
    user_error(h2f_here("identify", run, photo, "--species", checklist), f"{checklist}:2", "Nonexistus imaginarius")


def test_predict_names_every_photo_of_a_folder(indexed, data, work, cli):
    run, _ = indexed
    root, _ = data
    out = work / "names.csv"
    text = ok(cli("predict", run, root / "test", "--out", out, "--workers", "0"))
    table = pd.read_csv(out, dtype=str)
    photos = test_photos(root)
    assert len(table) == len(photos) and f"{len(photos)} of {len(photos)} observations answered" in text
    first = table.set_index("files").loc[photos[0].name]
    ans = json.loads(ok(h2f_here("identify", run, photos[0], "--json")))
    assert first["species1_class_id"] == ans["results"][0]["class_id"]
    assert float(first["score1"]) == pytest.approx(ans["results"][0]["score"], abs=1e-4)
    bad = work / "photos.csv"
    bad.write_text("photo,plant\nx.jpg,1\n")
    user_error(h2f_here("predict", run, bad, "--out", work / "x.csv", "--group-by", "plot"), f"{bad}:1",
               "no column 'plot'")


def test_export_onnx_and_a_bundle_with_checksums(indexed, work, cli):
    run, _ = indexed
    text = ok(cli("export", run, "--format", "onnx"))
    meta = json.loads((run / "export" / "meta.json").read_text())
    assert (run / "export" / "model.onnx").stat().st_size > 100_000
    assert meta["check"]["same_top5"] and meta["check"]["max_abs_diff_embeddings"] < 1e-4
    assert meta["class_ids"] == json.loads((run / "model_card.json").read_text())["class_ids"]
    assert "same top-5: yes" in text
    assert "up to date" in ok(h2f_here("export", run, "--format", "onnx"))
    archive = work / "bundle.tar.gz"
    ok(h2f_here("export", run, "--format", "bundle", archive))
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        index = json.loads(tar.extractfile(next(n for n in members if n.endswith("bundle.json"))).read())
        listed = index["files"]
        assert listed and any(name.endswith("model.onnx") for name in listed)
        for name, digest in listed.items():
            member = next(m for n, m in members.items() if n.endswith(name))
            got = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
            assert got == (digest["sha256"] if isinstance(digest, dict) else digest), name
    usage_error(h2f_here("export", run, "--format", "zip"), "unknown format")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # the fast suite serves in test_serve.py (`python -m herbarium2field serve`)
@pytest.mark.parametrize("cli", ["subprocess"], indirect=True)
def test_serve_answers_like_identify_and_stops_cleanly(indexed, data, work):
    run, _ = indexed
    root, _ = data
    photo = test_photos(root, 1)[0]
    port = free_port()
    log = work / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*H2F, "serve", str(run), "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.25)
        r = httpx.post(f"http://127.0.0.1:{port}/api/identify", files=[("files", (photo.name, photo.read_bytes()))],
                       timeout=60)
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal (exit -15), as service managers expect
    text = log.read_text()
    assert code in (0, -signal.SIGTERM) and "Finished server process" in text and "Traceback" not in text, text
    want = json.loads(ok(h2f_here("identify", run, photo, "--json")))
    assert [x["class_id"] for x in r.json()["results"]] == [x["class_id"] for x in want["results"]]
    unindexed = work / "unindexed"
    shutil.copytree(run, unindexed, ignore=shutil.ignore_patterns("gallery"))
    user_error(h2f_here("serve", unindexed, "--port", str(free_port())), "h2f index")


# ---- frozen features and classic runs ------------------------------------------------------------------------


def test_embed_caches_every_image_once(features, data):
    folder, text = features
    root, bad = data
    n = len(list_lines(root / "list" / "train.txt")) + len(list_lines(root / "list" / "test.txt"))
    assert f"{n} images x " in text and f"{n} embedded now" in text
    assert f"{len(bad)} image(s) could not be decoded" in text and all(rel in text for rel in bad)
    again = ok(h2f_here("embed", root, folder, "--backbone", "mobilenetv3_small_050", "--random-init", "--size",
                        "64", "--workers", "0", "--batch-size", "16", "--shard-size", "32"))
    assert "0 embedded now" in again and f"{n} reused" in again
    user_error(h2f_here("embed", root, folder.with_name("nope"), "--backbone", "mobilenetv3_small_050"),
               "no weights", "hint:")
    user_error(h2f_here("embed", root, folder, "--backbone", "mobilenetv3_small_050", "--random-init", "--mean",
                        "0.5,0.5"), "--mean")


def test_fit_classic_writes_a_run_that_evaluates(classic, features):
    folder, _ = features
    card = json.loads((classic / "model_card.json").read_text())
    assert card["kind"] == "classic" and card["model"]["classifier"] == "ncm"
    assert (classic / "model.joblib").stat().st_size > 0
    (ev,) = eval_dirs(classic)
    metrics = json.loads((ev / "metrics.json").read_text())
    pred = pd.read_csv(ev / "predictions.csv")
    assert metrics["groups"]["overall"]["top1"] == pytest.approx(pred["correct@1"].mean())
    user_error(h2f_here("fit-classic", folder, "--classifier", "forest", "--out", classic.with_name("forest")),
               "forest")
    user_error(h2f_here("fit-classic", folder, "-o", "C", "--out", classic.with_name("c")), "KEY=VALUE")


# ---- the ablation ---------------------------------------------------------------------------------------------


def test_ablate_runs_a_plan_and_writes_tables_and_a_verdict(synth_small, work, cli):
    plan = {
        "benchmarks": {"tiny": {"kind": "dataset", "config": "base.yaml", "params": {"root": str(synth_small)},
                                "overrides": [*TINY, "train.epochs=1", "train.warmup_epochs=0"]}},
        "variants": {"plain": {"description": "trained"},
                     "shifted": {"reuse": "plain", "mode": "prototype-shifted", "description": "moved prototypes"}},
        "verdict": {"candidate": "shifted", "baselines": ["plain"]},
    }
    folder = work / "ablation"
    folder.mkdir()
    (folder / "base.yaml").write_text("name: base\n")
    (folder / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    out = folder / "results.md"
    text = ok(cli("ablate", folder / "plan.yaml", "--work", folder / "work", "--out", out, "--n-boot", "50"))
    assert str(out) in " ".join(text.split())
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["benchmark"], r["variant"]) for r in rows] == [("tiny", "plain"), ("tiny", "shifted")]
    md = out.read_text()
    for r in rows:
        assert f"| {r['variant']} |" in md and f"{100 * r['metrics']['groups']['overall']['top1']:.1f}" in md
    verdict = json.loads(out.with_name("results_verdict.json").read_text())
    top1 = {r["variant"]: r["metrics"]["groups"]["overall"]["top1"] for r in rows}
    assert verdict[0]["plain"]["diff"] == pytest.approx(top1["shifted"] - top1["plain"], abs=1e-4)
    assert "### Does shifted beat plain?" in md
    (folder / "typo.yaml").write_text(yaml.safe_dump({**plan, "verdict": {"candidate": "shifted",
                                                                            "baselines": ["plian"]}}))
    user_error(h2f_here("ablate", folder / "typo.yaml", "--work", folder / "work"), "typo.yaml", "plian")


# ---- every command is here --------------------------------------------------------------------------------------


def test_every_command_is_run_by_this_file():
    """Each command of the CLI is called here (``h2f("NAME", ...)``: always a subprocess; ``cli("NAME", ...)``:
    a subprocess in ``cli[subprocess]``), so ``make test-slow`` runs every one as the console script."""
    from herbarium2field.cli import app

    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    source = Path(__file__).read_text()
    as_subprocess = set(re.findall(r'(?:\b(?:h2f|cli)\(|\[\*H2F, )"([a-z-]+)"', source))
    assert len(commands) >= 19 and sorted(commands - as_subprocess) == []
