"""The built-in synthetic dataset (`h2f synth`): determinism, layout, options, refusal, and a real domain gap."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from herbarium2field.cli import app
from herbarium2field.data.synth import contact_sheet, generate_dataset
from herbarium2field.data.synth.plan import long_tail_counts
from herbarium2field.errors import H2FError

SMALL = {"species": 6, "min_images": 4, "max_images": 12, "test_per_species": 2, "size": 96}


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def lines(path: Path) -> list[str]:
    text = path.read_bytes().decode()
    assert "\r" not in text, f"{path} must use \\n line endings"
    return text.splitlines()


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, seed=7, **SMALL)
    return root


def train_rows(root: Path) -> list[tuple[str, int]]:
    return [(p, int(c)) for p, c in (line.split(" ") for line in lines(root / "list" / "train.txt"))]


# ---- determinism ------------------------------------------------------------------------------------


def test_same_seed_gives_same_bytes_across_workers_and_other_seed_differs(tmp_path: Path) -> None:
    opts = {"species": 3, "min_images": 2, "max_images": 4, "test_per_species": 1, "size": 64}
    generate_dataset(tmp_path / "a", seed=1, **opts)
    generate_dataset(tmp_path / "b", seed=1, workers=2, **opts)
    generate_dataset(tmp_path / "c", seed=2, **opts)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b  # byte-identical, whatever the number of processes
    assert a["list/species_list.txt"] != c["list/species_list.txt"]
    assert set(a).isdisjoint(k for k in c if k.endswith(".jpg"))  # new ids
    assert {len(v) for k, v in a.items() if k.endswith(".jpg")} != {
        len(v) for k, v in c.items() if k.endswith(".jpg")
    }


def test_species_do_not_depend_on_how_many_there_are(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "few", species=2, min_images=2, max_images=2, test_per_species=1, size=48)
    generate_dataset(tmp_path / "more", species=4, min_images=2, max_images=2, test_per_species=1, size=48)
    few = lines(tmp_path / "few" / "list" / "species_list.txt")
    assert set(few) <= set(lines(tmp_path / "more" / "list" / "species_list.txt"))


# ---- layout -----------------------------------------------------------------------------------------


def test_lists_match_the_files_on_disk(ds: Path) -> None:
    species = {}
    for line in lines(ds / "list" / "species_list.txt"):
        cid, name = line.split("; ")
        assert re.fullmatch(r"[A-Z][a-z]+ [a-z]+ .+", name), name
        species[int(cid)] = name
    assert len(species) == SMALL["species"] and len(set(species.values())) == len(species)
    assert all(10_000 <= c < 1_000_000 for c in species)

    train = train_rows(ds)
    truth = [(p, int(c)) for p, c in (line.split(" ") for line in lines(ds / "list" / "groundtruth.txt"))]
    assert [p for p, _ in truth] == lines(ds / "list" / "test.txt")
    listed = [p for p, _ in train + truth]
    for rel, cid in train:
        kind, folder = rel.split("/")[1:3]
        assert kind in ("herbarium", "photo") and int(folder) == cid and cid in species
    assert all(re.fullmatch(r"test/\d+\.jpg", p) for p, _ in truth)
    assert {c for _, c in truth} == set(species)  # every species is tested, with or without pairs
    ids = [Path(p).stem for p in listed]
    assert len(ids) == len(set(ids)) and all(i.isdigit() for i in ids)
    on_disk = {k for k in files(ds) if k.endswith(".jpg")}
    assert on_disk == set(listed)  # everything listed exists, nothing unlisted
    assert not [k for k in files(ds) if ".tmp" in k]

    with_pairs = {int(c) for c in lines(ds / "list" / "class_with_pairs.txt")}
    without = {int(c) for c in lines(ds / "list" / "class_without_pairs.txt")}
    has_photo = {c for p, c in train if p.startswith("train/photo/")}
    assert with_pairs == has_photo and without == set(species) - has_photo and not with_pairs & without


def test_image_size_and_orientation(ds: Path) -> None:
    for rel, _ in train_rows(ds)[:40]:
        with Image.open(ds / rel) as im:
            w, h = im.size
            assert im.format == "JPEG" and im.mode == "RGB" and min(w, h) == SMALL["size"]
            assert (h > w) if "/herbarium/" in rel else (w >= h)


# ---- options ----------------------------------------------------------------------------------------


def test_long_tail_counts() -> None:
    counts = long_tail_counts(20, 8, 40, 1.0)
    assert counts[0] == 40 and counts[-1] == 8 and counts == sorted(counts, reverse=True)
    assert sum(c < 20 for c in counts) > 10  # a long tail: most classes are rare
    assert long_tail_counts(5, 8, 40, 0.0) == [40] * 5
    steep = long_tail_counts(20, 8, 40, 3.0)
    assert sum(c == 8 for c in steep) > sum(c == 8 for c in counts)


def test_counts_pairs_and_field_fraction_are_honoured(ds: Path, tmp_path: Path) -> None:
    per_class = Counter(c for _, c in train_rows(ds))
    assert sorted(per_class.values()) == sorted(long_tail_counts(6, 4, 12, 1.0))
    without = lines(ds / "list" / "class_without_pairs.txt")
    assert len(without) == round(0.4 * SMALL["species"])

    root = tmp_path / "pairs"
    summary = generate_dataset(
        root,
        species=10,
        min_images=10,
        max_images=10,
        field_fraction=0.3,
        without_pairs=0.2,
        test_per_species=1,
        size=48,
        imbalance=0.0,
    )
    assert (summary.with_pairs, summary.without_pairs) == (8, 2)
    photos = Counter(c for p, c in train_rows(root) if "/photo/" in p)
    assert set(photos.values()) == {3} and len(photos) == 8
    assert summary.field == 24 and summary.herbarium == 76 and summary.test == 10


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    for bad in (
        {"species": 0},
        {"min_images": 5, "max_images": 3},
        {"field_fraction": 1.0},
        {"size": 8},
        {"without_pairs": 1.5},
        {"workers": -1},
    ):
        with pytest.raises(H2FError):
            generate_dataset(tmp_path / "x", **bad)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


# ---- folder safety ----------------------------------------------------------------------------------


def test_refuses_a_foreign_folder_and_reuses_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(H2FError, match="not made by `h2f synth`"):
        generate_dataset(foreign, species=2, size=48)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(H2FError, match="not a folder"):
        generate_dataset(foreign / "notes.txt", species=2, size=48)

    ours = tmp_path / "ours"
    opts = {"species": 2, "min_images": 2, "max_images": 3, "test_per_species": 1, "size": 48}
    generate_dataset(ours, seed=1, **opts)
    first = {k for k in files(ours) if k.endswith(".jpg")}
    (ours / "notes.txt").write_text("kept")
    generate_dataset(ours, seed=2, **opts)  # a previous synth output: replaced, not mixed
    now = {k for k in files(ours) if k.endswith(".jpg")}
    assert not first & now and (ours / "notes.txt").read_text() == "kept"
    assert now == {
        line.split()[0] for line in lines(ours / "list" / "train.txt") + lines(ours / "list" / "test.txt")
    }


# ---- the images: a real domain gap, species that differ in shape ------------------------------------


def _hsv_stats(paths: list[Path]) -> tuple[float, float]:
    """Mean saturation, and mean brightness of the outer frame (the background)."""
    sat, border = [], []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("HSV"), dtype=np.float32)
        sat.append(a[..., 1].mean())
        v = a[..., 2]
        border.append(
            np.concatenate([v[:6].ravel(), v[-6:].ravel(), v[:, :6].ravel(), v[:, -6:].ravel()]).mean()
        )
    return float(np.mean(sat)), float(np.mean(border))


def test_domains_differ_in_colour_and_background(ds: Path) -> None:
    rows = train_rows(ds)
    herbarium = [ds / p for p, _ in rows if "/herbarium/" in p]
    field = [ds / p for p, _ in rows if "/photo/" in p] + [ds / p for p in lines(ds / "list" / "test.txt")]
    h_sat, h_border = _hsv_stats(herbarium)
    f_sat, f_border = _hsv_stats(field)
    assert h_sat < 0.6 * f_sat, (h_sat, f_sat)  # dried, faded specimens on paper vs living green plants
    assert h_border > f_border + 60, (h_border, f_border)  # bright paper vs cluttered, darker scenes


def test_species_differ_in_shape(ds: Path) -> None:
    """Herbarium silhouettes (grey levels only) identify the species better than chance."""
    feats, labels = [], []
    for rel, cid in train_rows(ds):
        if "/herbarium/" in rel:
            with Image.open(ds / rel) as im:
                g = np.asarray(im.convert("L").resize((24, 34), Image.BILINEAR), dtype=np.float32)
            feats.append((g < 140).astype(np.float32).ravel())
            labels.append(cid)
    x, y = np.stack(feats), np.array(labels)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    gaps = np.abs(means[:, None] - means[None]).mean(axis=2)[~np.eye(len(classes), dtype=bool)]
    assert gaps.min() > 0.01  # every pair of species has a different mean silhouette
    hits = 0
    for i in range(len(y)):  # leave-one-out nearest class mean
        keep = np.arange(len(y)) != i
        centroids = np.stack([x[keep & (y == c)].mean(axis=0) for c in classes])
        hits += classes[np.argmin(((centroids - x[i]) ** 2).sum(axis=1))] == y[i]
    assert hits / len(y) > 2.0 / len(classes), hits / len(y)


# ---- contact sheet and CLI --------------------------------------------------------------------------


def test_contact_sheet(ds: Path, tmp_path: Path) -> None:
    png = contact_sheet(ds, tmp_path / "sheet.png", per_species=2, species=3)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 300
    with pytest.raises(H2FError, match="list file not found"):
        contact_sheet(tmp_path, tmp_path / "none.png")


def test_cli_synth(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "synth",
            str(out),
            "--species",
            "3",
            "--size",
            "48",
            "--min-images",
            "2",
            "--max-images",
            "4",
            "--test-per-species",
            "1",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "with pairs" in result.output and "images/s" in result.output
    assert (out / "contact_sheet.png").is_file() and (out / "list" / "train.txt").is_file()

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "herbarium2field", "synth", str(tmp_path / "foreign")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "refusing" in proc.stderr and "Traceback" not in proc.stderr
