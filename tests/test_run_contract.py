"""The run directory is the contract: once trained (and indexed), a run identifies, serves, exports, re-calibrates
and evaluates new data with nothing but its own folder; a bundle does so without the checkpoint either; an older
run says which command brings it up to date; the package installs from a wheel with its configs."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from herbarium2field.identify.commands import index_run
from herbarium2field.paths import project_root
from herbarium2field.run.card import ModelCard
from tests.test_identify import h2f, test_photos
from tests.test_serve import Server


@pytest.fixture(scope="module")
def moved(identify_run: Path, synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The indexed, exported run and a copy of its dataset, then the dataset moved away (it is gone for
    the run), plus a few field photos kept elsewhere to identify."""
    base = tmp_path_factory.mktemp("contract")
    data, run = base / "data", base / "run"
    shutil.copytree(synth_small, data)
    shutil.copytree(identify_run, run, ignore=shutil.ignore_patterns("tb"))
    card = json.loads((run / "model_card.json").read_text())
    card["dataset"]["root"] = str(data.resolve())  # the run now belongs to this copy of the dataset
    (run / "model_card.json").write_text(json.dumps(card))
    index_run(run, data=data, force=True, progress=False, num_workers=0)  # its gallery too
    photos = base / "photos"
    photos.mkdir()
    for p in test_photos(data, 3):
        shutil.copy(p, photos / p.name)
    moved_data = base / "elsewhere"
    data.rename(moved_data)
    return {"run": run, "photos": photos, "data": moved_data, "base": base}


def test_identify_calibrate_export_and_evaluate_need_only_the_run(moved):
    run, photos = moved["run"], sorted(moved["photos"].iterdir())
    assert not Path(json.loads((run / "model_card.json").read_text())["dataset"]["root"]).exists()
    res = h2f("identify", str(run), *map(str, photos), "--json")
    assert res.returncode == 0, res.stderr
    ans = json.loads(res.stdout)
    assert len(ans["results"]) == 5 and ans["results"][0]["herbarium"] and ans["ranking"]
    cal = h2f("calibrate", str(run), "--target-precision", "0.8")
    assert cal.returncode == 0 and "validation field images" in cal.stdout, cal.stderr
    assert json.loads((run / "calibration.json").read_text())["target_precision"] == 0.8
    onnx = h2f("export", str(run), "--format", "onnx")
    assert onnx.returncode == 0, onnx.stderr
    gone = h2f("evaluate", str(run), "--n-boot", "0", "--workers", "0")  # the run's own test set is gone
    assert gone.returncode == 2 and "the dataset is not here" in gone.stderr and "--data" in gone.stderr
    new = h2f("evaluate", str(run), "--data", str(moved["data"]), "--n-boot", "0", "--workers", "0")
    assert new.returncode == 0, new.stderr
    metrics = json.loads((run / "eval" / "test-classifier" / "metrics.json").read_text())
    assert metrics["groups"]["overall"]["n"] == 12 and metrics["ranking"]["mode"] == "classifier"


def test_identify_reads_the_model_card_once(moved, h2f_main, monkeypatch, capsys):
    calls = []
    real = ModelCard.load.__func__  # type: ignore[attr-defined]

    def counting(cls, path):  # type: ignore[no-untyped-def]
        calls.append(path)
        return real(cls, path)

    monkeypatch.setattr(ModelCard, "load", classmethod(counting))
    photo = sorted(moved["photos"].iterdir())[0]
    assert h2f_main("identify", str(moved["run"]), str(photo), "--json") == 0
    assert json.loads(capsys.readouterr().out)["results"]
    assert len(calls) == 1, calls


def test_an_older_run_says_how_to_bring_it_up_to_date(identify_run, synth_small, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(identify_run, run, ignore=shutil.ignore_patterns("tb", "export"))
    card = json.loads((run / "model_card.json").read_text())
    for key in ("fingerprint", "format"):  # what a card written before the run contract lacks
        card.pop(key)
    card["checkpoint"] = "checkpoints/best.ckpt"
    (run / "model_card.json").write_text(json.dumps(card))
    for name in ("split.json", "prototypes.npz", "validation.npz", "inference.json", "calibration.json"):
        (run / name).unlink()
    photo = str(test_photos(synth_small, 1)[0])
    res = h2f("identify", str(run), photo)
    assert res.returncode == 2 and "older version of h2f" in res.stderr and "Traceback" not in res.stderr
    assert f"h2f index {run} --data" in res.stderr
    up = h2f("index", str(run), "--data", str(synth_small), "--workers", "0")
    assert up.returncode == 0 and "brought the run up to date" in up.stdout, up.stderr
    again = h2f("identify", str(run), photo, "--json")
    assert again.returncode == 0, again.stderr
    want = h2f("identify", str(identify_run), photo, "--json")
    assert [r["class_id"] for r in json.loads(again.stdout)["results"]] == \
        [r["class_id"] for r in json.loads(want.stdout)["results"]]
    # the upgrade records the same validation split training made
    assert json.loads((run / "split.json").read_text())["val_paths"] == \
        json.loads((identify_run / "split.json").read_text())["val_paths"]


@pytest.fixture(scope="module")
def bundles(moved) -> dict[str, Path]:
    """A bundle folder and a .tar.gz of the run; then the run itself is moved away too."""
    base = moved["base"]
    folder, archive = base / "deploy" / "bundle", base / "deploy" / "bundle.tar.gz"
    for out in (folder, archive):
        res = h2f("export", str(moved["run"]), "--format", "bundle", str(out))
        assert res.returncode == 0, res.stderr
    return {"folder": folder, "archive": archive}


def test_a_bundle_holds_what_identification_needs_and_no_checkpoint(bundles, moved):
    folder = bundles["folder"]
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"model_card.json", "inference.json", "prototypes.npz", "calibration.json", "export/model.onnx",
            "gallery/thumbs.bin", "gallery/index.faiss", "bundle.json"} <= files
    assert not any(f.startswith("checkpoints/") or f.endswith(".ckpt") for f in files)
    manifest = json.loads((folder / "bundle.json").read_text())
    assert set(manifest["files"]) == files - {"bundle.json"}
    with tarfile.open(bundles["archive"]) as t:
        assert {m.name.split("/", 1)[1] for m in t.getmembers() if m.isfile()} == files
    again = h2f("export", str(moved["run"]), "--format", "bundle", str(folder))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_bundle_identifies_and_serves_without_the_run_or_the_data(bundles, moved, tmp_path):
    run = moved["run"]
    hidden = run.with_name("run-hidden")
    run.rename(hidden)  # neither the run (checkpoint) nor the dataset is reachable now
    try:
        photos = sorted(moved["photos"].iterdir())
        env = {"H2F_CACHE": str(tmp_path / "cache")}
        res = h2f("identify", str(bundles["archive"]), str(photos[0]), "--json", env=env)
        assert res.returncode == 0, res.stderr
        ans = json.loads(res.stdout)
        assert ans["model"]["backend"] == "onnx" and len(ans["results"]) == 5
        torch_only = h2f("identify", str(bundles["folder"]), str(photos[0]), "--backend", "torch")
        assert torch_only.returncode == 2 and "--backend onnx" in torch_only.stderr
        srv = Server(bundles["folder"], tmp_path / "serve.log")
        try:
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                r = c.post("/api/identify", files=[("files", (photos[1].name, photos[1].read_bytes(), "image/jpeg"))])
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["model"]["backend"] == "onnx" and body["results"][0]["herbarium"]
                sheet = body["results"][0]["herbarium"][0]
                thumb = c.get(sheet["thumbnail_url"])
                assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
                full = c.get(sheet["image_url"])  # the dataset is not here: the stored thumbnail instead
                assert full.status_code == 200 and full.content == thumb.content
        finally:
            srv.stop()
    finally:
        hidden.rename(run)
    # the same answer as the run itself gives with the ONNX backend
    same = h2f("identify", str(run), str(photos[0]), "--json", "--backend", "onnx")
    assert [r["class_id"] for r in json.loads(same.stdout)["results"]] == [r["class_id"] for r in ans["results"]]
    np.testing.assert_allclose([r["score"] for r in json.loads(same.stdout)["results"]],
                               [r["score"] for r in ans["results"]], atol=1e-4)


def test_library_modules_defer_no_project_imports():
    """A project import inside a function body hides a cycle or a layer violation from the import linter's
    reading of the module; only the CLI defers (so that `h2f --help` does not import torch)."""
    offenders = []
    for f in sorted((project_root() / "src" / "herbarium2field").rglob("*.py")):
        if f.name == "cli.py":
            continue
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("herbarium2field"):
                        offenders.append(f"{f.relative_to(project_root())}:{inner.lineno} {inner.module}")
    assert offenders == []


def test_import_layers_hold():
    linter = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(linter)], capture_output=True, text=True, cwd=project_root(), timeout=300)
    assert res.returncode == 0 and "0 broken" in res.stdout, res.stdout + res.stderr


def test_the_wheel_ships_its_configs_and_trains_one_by_name(synth_small, tmp_path):
    """Build the wheel, install it in a fresh venv outside the checkout (dependencies borrowed from this one
    through a path entry, so nothing is downloaded), list the packaged configs and train one by name."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(project_root())], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("herbarium2field-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "borrowed.pth").write_text("\n".join(deps) + "\n")  # .pth files inside these are NOT processed:
    # the checkout's editable install stays invisible, so `herbarium2field` can only come from the wheel
    py = venv / "bin" / "python"
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "H2F_RUNS": str(work / "runs"), "H2F_CACHE": str(work / "cache")}
    where = subprocess.run([str(py), "-c", "import herbarium2field; print(herbarium2field.__file__)"], cwd=work,
                           capture_output=True, text=True, env=env, timeout=120)
    assert str(site) in where.stdout, where.stdout + where.stderr
    listed = subprocess.run([str(venv / "bin" / "h2f"), "configs"], cwd=work, capture_output=True, text=True,
                            env={**env, "COLUMNS": "200"}, timeout=120)
    assert listed.returncode == 0 and "recommended_lite0_cpu" in listed.stdout and "demo_softmax" in listed.stdout
    train = subprocess.run(
        [str(venv / "bin" / "h2f"), "train", "demo_softmax", "--data", str(synth_small), "--name", "by_name",
         "--set", "train.epochs=1", "--set", "train.warmup_epochs=0", "--set", "data.image_size=64",
         "--set", "data.num_workers=0"], cwd=work, capture_output=True, text=True, env=env, timeout=900)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    run = work / "runs" / "by_name"
    card = json.loads((run / "model_card.json").read_text())
    assert card["model"]["head"] == "softmax" and card["model"]["backbone"] == "tf_efficientnet_lite0"
    assert (run / "inference.json").is_file() and (run / "calibration.json").is_file()
