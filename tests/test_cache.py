"""The resized-image cache: reuse, invalidation, failures, crash safety, workers, ImageSource, ``h2f prepare``."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from herbarium2field.cli import app
from herbarium2field.data.cache import (
    DEFAULT_SIZE,
    ImageSource,
    cache_folder,
    cached_image_path,
    prepare_cache,
)
from herbarium2field.data.images import check_image, load_rgb
from herbarium2field.errors import ConfigError, H2FError, ImageError

SIZE = 32


def make_dataset(root: Path, n: int = 6) -> list[str]:
    """``n`` small images in a PlantCLEF-like tree (JPEGs of distinct colours, plus one RGBA PNG)."""
    rels = []
    rng = np.random.default_rng(0)
    for i in range(n - 1):
        rel = f"train/herbarium/{100 + i % 2}/{i}.jpg"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.full((90, 120, 3), (40 * i) % 256, np.uint8) + rng.integers(
            0, 20, (90, 120, 3), dtype=np.uint8
        )
        Image.fromarray(arr).save(path, quality=90)
        rels.append(rel)
    rel = "test/cutout.png"
    (root / "test").mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (80, 100), (0, 128, 0, 255)).save(root / rel)
    rels.append(rel)
    return rels


def mtimes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and p.name not in ("index.json", ".lock")
    }


def tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


@pytest.fixture
def data(tmp_path) -> tuple[Path, list[str], Path]:
    root = tmp_path / "data"
    rels = make_dataset(root)
    return root, rels, tmp_path / "cache"


def test_default_size_is_in_the_agreed_range():
    assert 256 <= DEFAULT_SIZE <= 320


def test_first_run_writes_all_second_reuses_all(data):
    root, rels, cache = data
    first = prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert (first.written, first.reused, first.failed) == (len(rels), 0, [])
    folder = cache_folder(root, SIZE, cache)
    assert first.cache_dir == folder and (folder / "index.json").is_file()
    before = mtimes(folder)
    assert len(before) == len(rels)
    second = prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert (second.written, second.reused, second.failed) == (0, len(rels), [])
    assert mtimes(folder) == before  # nothing rewritten
    for rel in rels:
        cached = cached_image_path(root, rel, size=SIZE, cache_dir=cache)
        assert cached is not None
        img = Image.open(cached)
        assert img.format == "JPEG" and img.mode == "RGB" and min(img.size) == SIZE
    # non-JPEG sources get ".jpg" appended so names never collide; alpha went on white, not black
    png = cached_image_path(root, "test/cutout.png", size=SIZE, cache_dir=cache)
    assert png is not None and png.name == "cutout.png.jpg"


def test_changed_source_is_redone_and_only_that_one(data):
    root, rels, cache = data
    prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    folder = cache_folder(root, SIZE, cache)
    before = mtimes(folder)
    touched = root / rels[1]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # `touch`: same bytes, new mtime
    assert cached_image_path(root, rels[1], size=SIZE, cache_dir=cache) is None  # stale now
    report = prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert (report.written, report.reused) == (1, len(rels) - 1)
    after = mtimes(folder)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {rels[1]}
    # new content: the cached pixels follow the source
    Image.new("RGB", (120, 90), (250, 10, 10)).save(root / rels[2], quality=95)
    report = prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert report.written == 1
    cached = cached_image_path(root, rels[2], size=SIZE, cache_dir=cache)
    assert cached is not None
    r, g, b = Image.open(cached).convert("RGB").getpixel((5, 5))
    assert r > 230 and g < 30 and b < 30


def test_changing_size_uses_another_folder(data):
    root, rels, cache = data
    prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    report = prepare_cache(root, rels, size=24, cache_dir=cache, workers=1, progress=False)
    assert (report.written, report.reused) == (len(rels), 0)
    assert report.cache_dir.name == "size-24"
    cached = cached_image_path(root, rels[0], size=24, cache_dir=cache)
    assert cached is not None and min(Image.open(cached).size) == 24
    assert cached_image_path(root, rels[0], size=SIZE, cache_dir=cache) is not None  # old size still there
    again = prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert again.reused == len(rels)


def test_unreadable_images_are_reported_and_skipped(data):
    root, rels, cache = data
    cut = root / "train/herbarium/100/cut.jpg"
    full = (root / rels[0]).read_bytes()
    cut.write_bytes(full[: len(full) // 2])
    (root / "train/herbarium/101/notes.jpg").write_text("field notes, not a picture\n")
    bad = ["train/herbarium/100/cut.jpg", "train/herbarium/101/notes.jpg", "train/herbarium/101/gone.jpg"]
    report = prepare_cache(root, rels + bad, size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert report.written == len(rels)
    assert not report.ok
    reasons = dict(report.failed)
    assert set(reasons) == set(bad)
    assert "truncated" in reasons[bad[0]]
    assert "text" in reasons[bad[1]]
    assert "not found" in reasons[bad[2]]
    for rel in bad:
        assert cached_image_path(root, rel, size=SIZE, cache_dir=cache) is None
    index = json.loads((report.cache_dir / "index.json").read_text())
    assert set(index["entries"]) == set(rels)
    # fixed by the user: picked up on the next run
    cut.write_bytes(full)
    report = prepare_cache(root, rels + bad[:1], size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert (report.written, report.reused, report.failed) == (1, len(rels), [])


def test_a_source_that_turns_bad_loses_its_cache_entry(data):
    root, rels, cache = data
    prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    (root / rels[0]).write_bytes(b"")
    report = prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert [rel for rel, _ in report.failed] == [rels[0]]
    assert cached_image_path(root, rels[0], size=SIZE, cache_dir=cache) is None
    assert not (report.cache_dir / rels[0]).exists()


def test_leftovers_of_an_interrupted_run_are_ignored_and_cleaned(data):
    root, rels, cache = data
    folder = cache_folder(root, SIZE, cache)
    (folder / "train/herbarium/100").mkdir(parents=True)
    half = folder / "train/herbarium/100/.0.jpg.4242.tmp"  # a half-written image
    half.write_bytes(b"\xff\xd8\xff\xe0 half")
    (folder / ".index.json.4242.tmp").write_text('{"format": 1, "entr')  # a half-written index
    report = prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert report.written == len(rels)
    assert tmp_files(folder) == []
    json.loads((folder / "index.json").read_text())


def test_a_damaged_index_costs_a_rebuild_not_an_error(data):
    root, rels, cache = data
    prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    index = cache_folder(root, SIZE, cache) / "index.json"
    index.write_text(index.read_text()[:20])
    assert cached_image_path(root, rels[0], size=SIZE, cache_dir=cache) is None
    report = prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    assert (report.written, report.failed) == (len(rels), [])


def test_interrupt_keeps_finished_work_and_never_indexes_partial_files(tmp_path):
    """A real Ctrl-C (SIGINT) in the middle of `h2f prepare`, then a re-run."""
    root = tmp_path / "data"
    src = tmp_path / "big.png"
    Image.new("RGB", (2400, 1800), (90, 120, 60)).save(src)  # slow to decode, tiny on disk
    n = 300  # several seconds of work, so the interrupt lands mid-run even on a loaded machine
    for i in range(n):
        dest = root / "train" / "herbarium" / "sp1" / f"{i:03d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    cache = tmp_path / "cache"
    folder = cache / f"size-{SIZE}"
    cmd = [sys.executable, "-m", "herbarium2field", "prepare", str(root), "--size", str(SIZE)]
    proc = subprocess.Popen(
        [*cmd, "--cache", str(cache), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a shell's background job (e.g. CI run with `&`) ignores SIGINT and children inherit that: undo it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not list(folder.rglob("*.png.jpg")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    index = json.loads((folder / "index.json").read_text())  # flushed on the way out
    done = index["entries"]
    assert 0 < len(done) < n
    for rel in done:  # every indexed file is complete
        check_image(folder / (rel + ".jpg"))
    report = prepare_cache(
        root,
        [f"train/herbarium/sp1/{i:03d}.png" for i in range(n)],
        size=SIZE,
        cache_dir=cache,
        workers=2,
        progress=False,
    )
    assert report.reused == len(done) and report.written == n - len(done) and report.ok
    assert tmp_files(folder) == []


def test_workers_give_identical_files(data):
    root, rels, cache = data
    one = prepare_cache(root, rels, size=SIZE, cache_dir=cache / "one", workers=1, progress=False)
    two = prepare_cache(root, rels, size=SIZE, cache_dir=cache / "two", workers=2, progress=True)
    assert one.written == two.written == len(rels)
    files = sorted(p.relative_to(one.cache_dir) for p in one.cache_dir.rglob("*.jpg"))
    assert files == sorted(p.relative_to(two.cache_dir) for p in two.cache_dir.rglob("*.jpg"))
    for f in files:
        assert (one.cache_dir / f).read_bytes() == (two.cache_dir / f).read_bytes(), f
    idx = [json.loads((r.cache_dir / "index.json").read_text()) for r in (one, two)]
    assert idx[0] == idx[1]


def test_bad_arguments(data):
    root, rels, cache = data
    with pytest.raises(H2FError, match="relative"):
        prepare_cache(root, ["../outside.jpg"], size=SIZE, cache_dir=cache, progress=False)
    with pytest.raises(H2FError, match="relative"):
        prepare_cache(root, ["/etc/passwd"], size=SIZE, cache_dir=cache, progress=False)
    with pytest.raises(ConfigError, match="size"):
        prepare_cache(root, rels, size=0, cache_dir=cache, progress=False)


def test_default_cache_dir_is_beside_the_data(data, monkeypatch):
    root, rels, _ = data
    monkeypatch.delenv("H2F_CACHE", raising=False)
    report = prepare_cache(root, rels[:2], size=SIZE, workers=1, progress=False)
    assert report.cache_dir == root / ".h2f-cache" / f"size-{SIZE}"
    assert cached_image_path(root, rels[0], size=SIZE) is not None


# ---- ImageSource -------------------------------------------------------------------------------------


def test_image_source_serves_the_cache_without_touching_sources(data):
    root, rels, cache = data
    prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    source = ImageSource(root, size=SIZE, cache_dir=cache)
    assert len(source) == len(rels) and source.is_cached(rels[0])
    img = source.load(rels[0])
    assert img.mode == "RGB" and min(img.size) == SIZE
    # Break a source after construction: the loader keeps serving the cache (no per-item stat/read).
    (root / rels[0]).write_bytes(b"garbage")
    assert np.array_equal(np.asarray(source.load(rels[0])), np.asarray(img))
    # A new ImageSource sees the change, falls back to the source and reports it properly.
    fresh = ImageSource(root, size=SIZE, cache_dir=cache)
    assert not fresh.is_cached(rels[0]) and len(fresh) == len(rels) - 1
    with pytest.raises(ImageError, match=rels[0]):
        fresh.load(rels[0])


def test_image_source_is_picklable_for_dataloader_workers(data):
    root, rels, cache = data
    prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    source = ImageSource(root, size=SIZE, cache_dir=cache)
    clone = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 5000
    for rel in rels:
        assert np.array_equal(np.asarray(clone.load(rel)), np.asarray(source.load(rel)))


def test_image_source_without_cache_gives_the_same_geometry(data):
    root, rels, cache = data
    uncached = ImageSource(root, size=SIZE, cache_dir=cache)
    assert len(uncached) == 0
    prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    cached = ImageSource(root, size=SIZE, cache_dir=cache)
    for rel in rels:
        a, b = uncached.load(rel), cached.load(rel)
        assert a.size == b.size
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        assert diff.mean() < 3  # only the JPEG re-encoding differs
    assert load_rgb(root / rels[-1], min_side=SIZE).getpixel((2, 2)) == (0, 128, 0)


def test_image_source_falls_back_when_a_cache_file_is_lost(data):
    root, rels, cache = data
    report = prepare_cache(root, rels, size=SIZE, cache_dir=cache, workers=1, progress=False)
    source = ImageSource(root, size=SIZE, cache_dir=cache)
    (report.cache_dir / rels[0]).unlink()
    (report.cache_dir / rels[1]).write_bytes(b"")  # e.g. power loss right after os.replace
    assert min(source.load(rels[0]).size) == SIZE
    assert min(source.load(rels[1]).size) == SIZE


# ---- CLI ---------------------------------------------------------------------------------------------


def flat(text: str) -> str:
    """CLI output with Rich's line wrapping undone."""
    return " ".join(text.split())


def test_cli_prepare_reports_failures_with_exit_code(make_aml, tmp_path):
    root = make_aml()
    (root / "train/herbarium/202/5.jpg").write_bytes(b"<html>not found</html>")
    runner = CliRunner()
    cache = tmp_path / "c"
    result = runner.invoke(
        app, ["prepare", str(root), "--size", "24", "--cache", str(cache), "--workers", "1"]
    )
    assert result.exit_code == 1, result.output
    out = flat(result.output)
    assert "6 written" in out and "1 failed" in out
    assert "train/herbarium/202/5.jpg: an HTML" in out
    Image.new("RGB", (48, 64)).save(root / "train/herbarium/202/5.jpg")
    result = runner.invoke(
        app, ["prepare", str(root), "--size", "24", "--cache", str(cache), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "1 written" in flat(result.output) and "6 reused" in flat(result.output)


def test_cli_prepare_real_sample(aml_sample, tmp_path):
    runner = CliRunner()
    args = ["prepare", str(aml_sample), "--size", "48", "--cache", str(tmp_path / "c"), "--workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "221 written" in flat(result.output) and "0 failed" in flat(result.output)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "221 reused" in flat(again.output)
    source = ImageSource(aml_sample, size=48, cache_dir=tmp_path / "c")
    assert len(source) == 221
