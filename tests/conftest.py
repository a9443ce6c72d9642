"""Shared fixtures: the real shared data, tiny dataset builders, and the strict-CI rule.

Strict CI: with ``CI`` set (``.ci/run`` runs with ``CI=true``), a test that would be skipped because the
browser, the shared data or an optional package is missing FAILS instead, so a green CI means every test ran.
Locally such tests skip with the reason; ``-ra`` lists every skip in the summary.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys
import warnings

# Torch's OpenMP threads spin while they wait for each other. On 2 cores shared with loader workers, a server
# and its client, parallel runs or another job, a spinning thread holds the core its partner needs: a tiny
# training step measured 6 s instead of 0.1 s. Waiting passively costs microseconds on an idle machine. Set
# before torch is imported (libgomp reads it once); every `h2f` subprocess of the suite inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Callable, Generator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest
from PIL import Image

from herbarium2field.paths import shared_data_dir


def strict_ci() -> bool:
    """True when ``CI`` is set to anything but an empty/false value (GitHub, GitLab and ``.ci/run`` say true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


#: Reasons of skips that mean "something the suite needs is not installed / not there" (failures under CI).
#: ``could not import`` is ``pytest.importorskip``'s own wording.
MISSING = re.compile(r"could not import|no module named|not installed|shared PlantCLEF data|real image sample"
                     r"|Chromium", re.IGNORECASE)


def missing(reason: str) -> NoReturn:
    """Skip with ``reason`` locally; fail under CI, where everything the suite needs must be present."""
    if strict_ci():
        pytest.fail(f"required under CI, but {reason}", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, what: str | None = None) -> ModuleType:
    """Import an optional package, or skip (fail under CI) saying it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{what or name} is not installed ({exc})")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Safety net under CI: a skip for a missing requirement raised anywhere (``pytest.importorskip`` in any
    test file, a fixture's own ``pytest.skip``) becomes a failure; other skips stay skips (listed by ``-ra``)."""
    rep = yield
    if rep.skipped and strict_ci() and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if MISSING.search(reason):
            rep.outcome = "failed"
            rep.longrepr = f"required under CI (CI={os.environ.get('CI')!r}), but skipped: {reason}"
    return rep


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "aml" / "list" / "train.txt").is_file():
        missing(f"shared PlantCLEF data not found at {root} (set H2F_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def aml_sample(shared_data: Path) -> Path:
    root = shared_data / "aml-sample"
    if not (root / "list" / "train.txt").is_file():
        missing(f"real image sample not found at {root}")
    return root


def h2f_here(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``h2f ARGS`` in this process, through ``cli.main`` as the console script calls it: exit code, stdout and
    stderr (warnings included, as Python shows them) as a subprocess would give them, without a fresh
    interpreter's 10-15 s of imports. test_cli.py runs every command as the real console script too."""
    from herbarium2field import cli

    argv = ["h2f", *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    with (pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err),
          warnings.catch_warnings(record=True) as caught):
        warnings.simplefilter("default")  # Python's own default, as in a fresh process
        mp.setattr(sys, "argv", argv)
        for key, value in {"COLUMNS": "200", **(env or {})}.items():
            mp.setenv(key, value)
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue() + shown)



@pytest.fixture
def h2f_main(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """Run ``h2f ARGS`` in this process as the console script does (``cli.main``: a user error is one line on
    stderr and exit code 2) and return the exit code; the output is in ``capsys``."""
    from herbarium2field import cli

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["h2f", *args])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        return int(exc.value.code or 0)

    return run


def write_jpeg(path: Path, color: tuple[int, int, int] = (120, 160, 90), size: tuple[int, int] = (48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG", quality=85)
    return path


@pytest.fixture
def make_aml(tmp_path: Path) -> Callable[..., Path]:
    """Build a small AML-layout dataset; list-file contents can be overridden to inject faults."""

    def build(
        train: list[str] | None = None,
        test: list[str] | None = None,
        groundtruth: list[str] | None = None,
        species: list[str] | None = None,
        with_pairs: list[str] | None = None,
        without_pairs: list[str] | None = None,
        images: bool = True,
        newline: str = "\n",
    ) -> Path:
        root = tmp_path / "aml"
        train = train if train is not None else [
            "train/herbarium/101/1.jpg 101", "train/herbarium/101/2.jpg 101", "train/photo/101/3.jpg 101",
            "train/herbarium/202/4.jpg 202", "train/herbarium/202/5.jpg 202",
        ]
        groundtruth = groundtruth if groundtruth is not None else ["test/6.jpg 101", "test/7.jpg 202"]
        test = test if test is not None else [g.split()[0] for g in groundtruth]
        species = species if species is not None else ["101; Aus bus L.", "202; Cus dus (L.) Mill."]
        with_pairs = with_pairs if with_pairs is not None else ["101"]
        without_pairs = without_pairs if without_pairs is not None else ["202"]
        lists = root / "list"
        lists.mkdir(parents=True, exist_ok=True)
        for name, lines in [("train.txt", train), ("test.txt", test), ("groundtruth.txt", groundtruth),
                            ("species_list.txt", species), ("class_with_pairs.txt", with_pairs),
                            ("class_without_pairs.txt", without_pairs)]:
            (lists / name).write_bytes(("".join(line + newline for line in lines)).encode())
        if images:
            for line in train + test:
                parts = line.split()
                if parts and parts[0].startswith(("train/", "test/")):
                    write_jpeg(root / parts[0])
        return root

    return build


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic two-domain dataset (6 species, 64 px), shared by the training/evaluation tests."""
    from herbarium2field.data.synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, species=6, min_images=8, max_images=16, test_per_species=2, size=72, seed=3, workers=1)
    return root


#: Settings for a tiny but real network (a few seconds on 2 cores); tests add their own overrides.
TINY = [
    "model.backbone=mobilenetv3_small_050", "model.embedding_dim=32", "data.image_size=64", "data.batch_size=16",
    "data.num_workers=0", "data.val_field_fraction=0.3", "data.val_herbarium_fraction=0.1", "train.epochs=2",
    "train.warmup_epochs=1", "train.lr_backbone=1e-3", "train.early_stopping.patience=null", "trainer.accelerator=cpu",
]


@pytest.fixture(scope="session")
def tiny_run(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained ArcFace run on ``synth_small`` shared by evaluation/identification tests (read-only use).

    It ranks by its classifier (``inference.mode=classifier``): with ``auto`` the choice on its few validation
    photos flips with any change to training, and the tests built on it would test that coin, not their
    command. Runs whose own choice is a prototype ranking: ``test_evaluate.py::auto_prototype_run``."""
    from herbarium2field.config import load_config
    from herbarium2field.training.train import train

    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [f"data.root={synth_small}", "name=tiny", *TINY, "train.epochs=3",
                             "inference.mode=classifier"])
    return train(cfg, progress=False, runs_root=runs).root


@pytest.fixture(scope="session")
def identify_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_run`` copied, indexed (gallery + calibration) and exported to ONNX, for identification tests."""
    import shutil

    from herbarium2field.identify.commands import index_run
    from herbarium2field.identify.export import export_onnx

    run = tmp_path_factory.mktemp("identify") / "runs" / "ident"
    shutil.copytree(tiny_run, run)
    index_run(run, progress=False, num_workers=0)
    export_onnx(run)
    return run
