"""Exact resume: a real ``h2f train`` process killed with SIGKILL and continued with ``--resume`` ends with the
same checkpoint, tensor for tensor, as the same run left alone (CPU), and two runs in separate processes agree.

Every run here uses loader workers (persistent, so their state outlives an epoch), the colour twist and
background swap, whose field photos are drawn at random per item. Kill points are found from what the run
itself writes, never from timing: ``checkpoints/last.ckpt`` for "after epoch e", and the per-step
``train/loss_step`` scalars in its TensorBoard events (``trainer.log_every_n_steps=1``) for "in the middle of
epoch e". Runs that do not depend on each other run at the same time (most of a tiny run is start-up).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

#: A tiny run with 2 persistent loader workers, background swap, 1 frozen warm-up epoch then fine-tuning.
#: 5 batches of 8 an epoch: a mid-epoch kill (after the second step) leaves three steps before the epoch's end.
RECIPE = [*TINY, "data.num_workers=2", "data.herbarium_aug.background_swap=0.5", "data.batch_size=8",
          "data.sampler.epoch_size=40",
          "train.warmup_epochs=1", "train.early_stopping.patience=5", "trainer.log_every_n_steps=1"]

#: metrics.csv columns that must match exactly (all but the timings).
COMPARED = ["epoch", "stage", "train_loss", "val_loss", "val_top1", "val_top5", "val_top1_with_pairs",
            "val_top5_with_pairs", "val_top1_without_pairs", "val_top5_without_pairs", "lr_head", "lr_backbone"]

TIMEOUT = 600


class Runs:
    """Start ``python -m herbarium2field train`` processes under one runs folder, output to log files."""

    def __init__(self, root: Path, data: Path) -> None:
        self.root, self.data = root, data
        # One intra-op thread: several runs (each with 2 loader workers) share the machine's cores.
        self.env = {**os.environ, "H2F_RUNS": str(root / "runs"), "H2F_CACHE": str(root / "cache"),
                    "OMP_NUM_THREADS": "1"}

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def start(self, name: str, *sets: str) -> subprocess.Popen:
        args = [a for s in [f"data.root={self.data}", *RECIPE, *sets] for a in ("--set", s)]
        return self._popen(name, ["train", "--name", name, *args])

    def resume(self, name: str) -> subprocess.Popen:
        return self._popen(name, ["train", "--resume", str(self.run_dir(name))])

    def _popen(self, name: str, args: list[str]) -> subprocess.Popen:
        with (self.root / f"{name}.log").open("a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "herbarium2field", *args], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT)
        proc.run_name = name  # type: ignore[attr-defined]
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return (self.root / f"{proc.run_name}.log").read_text()[-4000:]  # type: ignore[attr-defined]

    def finish(self, proc: subprocess.Popen) -> Path:
        assert proc.wait(timeout=TIMEOUT) == 0, self.log(proc)
        return self.run_dir(proc.run_name)  # type: ignore[attr-defined]

    def train(self, name: str, *sets: str) -> Path:
        return self.finish(self.start(name, *sets))


def wait_until(runs: Runs, proc: subprocess.Popen, condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit code {proc.returncode}) before {what}:\n{runs.log(proc)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


class LastCheckpoint:
    """The ``epoch`` of a run's ``last.ckpt`` as it changes (written atomically, so always complete)."""

    def __init__(self, run: Path) -> None:
        self.path = run / "checkpoints" / "last.ckpt"
        self._seen: tuple[int, int] | None = None
        self.epoch = -1

    def __call__(self) -> int:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return -1
        if (st.st_ino, st.st_mtime_ns) != self._seen:
            self._seen = (st.st_ino, st.st_mtime_ns)
            self.epoch = int(torch.load(self.path, map_location="cpu", weights_only=False)["epoch"])
        return self.epoch


def last_logged_step(run: Path) -> int:
    """The highest global step whose ``train/loss_step`` the run has written to TensorBoard (-1: none yet)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    step = -1
    for events in (run / "tb").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            if any(v.tag == "train/loss_step" for v in event.summary.value):
                step = max(step, int(event.step))
    return step


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)  # no clean shutdown: no hooks, no final checkpoint, workers orphaned
    proc.wait(timeout=60)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def read_metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def assert_same_run(got: Path, want: Path) -> None:
    """Same metrics.csv values and the same final (last.ckpt) and best checkpoints: weights and buffers,
    optimizer state, LR schedule, step and epoch counters, early-stopping state."""
    assert [[r[c] for c in COMPARED] for r in read_metrics(got)] == [[r[c] for c in COMPARED]
                                                                      for r in read_metrics(want)]
    for name in ("last.ckpt", "best.ckpt"):
        a, b = load(got / "checkpoints" / name), load(want / "checkpoints" / name)
        assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]), name
        assert a["state_dict"].keys() == b["state_dict"].keys()
        differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
        assert not differ, f"{name}: {len(differ)} of {len(a['state_dict'])} tensors differ, e.g. {differ[:3]}"
        oa, ob = a["optimizer_states"][0], b["optimizer_states"][0]
        assert oa["state"].keys() == ob["state"].keys(), name
        for p, state in oa["state"].items():
            for k, v in state.items():
                assert torch.equal(v, ob["state"][p][k]), f"{name}: optimizer state {p}.{k}"
        assert [g["lr"] for g in oa["param_groups"]] == [g["lr"] for g in ob["param_groups"]], name
        assert a["lr_schedulers"] == b["lr_schedulers"], name
        stop_a = {k: v for k, v in a["callbacks"].items() if k.startswith("EarlyStopping")}
        stop_b = {k: v for k, v in b["callbacks"].items() if k.startswith("EarlyStopping")}
        assert str(stop_a) == str(stop_b), name


def assert_finished(run: Path, epochs: int) -> None:
    """last.ckpt holds the end of training (not an older epoch), with one metrics row per epoch."""
    assert [int(r["epoch"]) for r in read_metrics(run)] == list(range(epochs))
    assert load(run / "checkpoints" / "last.ckpt")["epoch"] == epochs - 1


def kill_and_resume(runs: Runs, name: str, point: str, *sets: str, steps_per_epoch: int | None = None) -> Path:
    """Start a run, SIGKILL it at ``point``, resume it to the end and return its folder.

    ``point`` is ``"after:E"`` (as soon as epoch E's checkpoint is written), ``"mid:E"`` (once epoch E, E >= 1,
    has taken two optimiser steps, several before its end) or ``"first"`` (the same in epoch 0, before any
    checkpoint: needs ``steps_per_epoch``).
    """
    kind, _, e = point.partition(":")
    epoch = int(e or 0)
    run = runs.run_dir(name)
    last = LastCheckpoint(run)
    proc = runs.start(name, *sets)
    if kind == "after":
        wait_until(runs, proc, lambda: last() >= epoch, f"the checkpoint of epoch {epoch}")
        kill(proc)
        resumed_from = epoch
    else:
        if steps_per_epoch is None:
            wait_until(runs, proc, lambda: last() >= 0, "the first checkpoint")
            steps_per_epoch = int(load(last.path)["global_step"])
        assert steps_per_epoch >= 5, "a mid-epoch kill needs a few steps of room"
        step = epoch * steps_per_epoch + 1
        wait_until(runs, proc, lambda: last_logged_step(run) >= step, f"step {step} (epoch {epoch})")
        kill(proc)
        resumed_from = epoch - 1
    assert proc.returncode == -signal.SIGKILL
    assert last() == resumed_from, f"killed at {point}: expected last.ckpt of epoch {resumed_from}, got {last()}"
    return runs.finish(runs.resume(name))


@pytest.fixture(scope="module")
def runs(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("resume"), synth_small)


#: The fast tests' run: softmax (as in the issue), warm-up then two fine-tuning epochs.
FAST = ("model.head=softmax", "train.epochs=3")


@pytest.fixture(scope="module")
def left_alone(runs: Runs) -> Iterator[dict[str, subprocess.Popen]]:
    """The fast run, twice, left alone: started at once in separate processes, waited for where needed."""
    procs = {name: runs.start(name, *FAST) for name in ("reference", "again")}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_mid_finetuning_and_resumed_ends_bit_identical(runs, left_alone):
    """SIGKILL in the middle of the second fine-tuning epoch: --resume continues from the first fine-tuning
    epoch's checkpoint and ends exactly where the uninterrupted run did."""
    run = kill_and_resume(runs, "killed", "mid:2", *FAST)
    reference = runs.finish(left_alone["reference"])
    assert_same_run(run, reference)
    assert_finished(run, 3)
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_two_processes_train_the_same_run(runs, left_alone):
    """Determinism across processes with loader workers and background swap: equal final state dicts."""
    reference, again = runs.finish(left_alone["reference"]), runs.finish(left_alone["again"])
    assert_finished(reference, 3)
    assert_finished(again, 3)
    assert_same_run(again, reference)


def test_a_run_that_stopped_early_stays_stopped_when_resumed(synth_small, tmp_path, monkeypatch):
    """Early stopping's decision is part of the resumed state: resuming a run that stopped early (or one killed
    between its final checkpoint and its exit) trains no epoch the run left alone did not."""
    from herbarium2field.config import load_config
    from herbarium2field.training.train import train

    monkeypatch.setenv("H2F_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [f"data.root={synth_small}", "name=stopped", *TINY, "train.epochs=6",
                             "train.early_stopping.patience=1"])
    paths = train(cfg, progress=False, runs_root=tmp_path / "runs")
    rows = read_metrics(paths.root)
    assert len(rows) < 6, "the run was meant to stop early"
    step = load(paths.last)["global_step"]
    train(load_config(paths.config), resume=paths.root, progress=False)
    assert read_metrics(paths.root) == rows
    assert load(paths.last)["global_step"] == step


@pytest.mark.slow
@pytest.mark.parametrize("head", ["softmax", "arcface"])
def test_resume_from_any_kill_point_ends_bit_identical(runs, head):
    """4 epochs (1 warm-up), killed at the end of warm-up, after the first fine-tuning epoch, in the middle of
    a fine-tuning epoch, and during epoch 0 before any checkpoint: each resumed run (two at a time) ends as
    the run left alone."""
    sets = (f"model.head={head}", "train.epochs=4")
    reference = runs.train(f"full-{head}", *sets)
    assert_finished(reference, 4)
    ref = load(reference / "checkpoints" / "last.ckpt")
    steps = ref["global_step"] // 4
    points = ["after:0", "after:1", "mid:2", "first"]
    with ThreadPoolExecutor(2) as pool:
        done = pool.map(lambda p: kill_and_resume(runs, f"{head}-{p.replace(':', '')}", p, *sets,
                                                  steps_per_epoch=steps), points)
        for run in done:
            assert_same_run(run, reference)
            assert_finished(run, 4)
