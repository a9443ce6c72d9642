"""A contact sheet of a dataset in the AML layout: a few species per row, herbarium sheets then field photos.

Made for the synthetic data (to see the domain gap at a glance) but it only reads the list files, so it
works on real PlantCLEF-style folders too. Species without field photos in training show test photos,
tagged "test".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from herbarium2field.errors import H2FError
from herbarium2field.viz.style import FIELD_COLOR, HERBARIUM_COLOR, plt, save_figure

_THUMB = 240  # px, long side of the thumbnails kept in memory


def _read_pairs(path: Path, sep: str | None = None) -> list[tuple[str, str]]:
    if not path.is_file():
        raise H2FError("list file not found", path=path, hint="is this a dataset root with a list/ folder?")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(sep, 1)]
        if len(parts) != 2:
            raise H2FError(f"expected two fields, got {line!r}", path=path, line=number)
        rows.append((parts[0], parts[1]))
    return rows


def _pick_species(classes: list[str], photos: dict[str, list[str]], n: int) -> list[str]:
    """Alternate species with and without field photos in training, so both kinds are shown."""
    paired = [c for c in classes if photos.get(c)]
    unpaired = [c for c in classes if not photos.get(c)]
    out: list[str] = []
    while len(out) < n and (paired or unpaired):
        for group in (paired, unpaired):
            if group and len(out) < n:
                out.append(group.pop(0))
    return out


def _thumb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((_THUMB, _THUMB))
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise H2FError(f"cannot read image: {exc}", path=path) from exc


def contact_sheet(root: Path, out_png: Path, *, per_species: int = 4, species: int = 6) -> Path:
    """Save a grid PNG: ``species`` rows, ``per_species`` herbarium sheets then ``per_species`` field photos."""
    root = Path(root)
    train = _read_pairs(root / "list" / "train.txt")
    names = dict(_read_pairs(root / "list" / "species_list.txt", sep=";"))
    test_file = root / "list" / "groundtruth.txt"
    tests = _read_pairs(test_file) if test_file.is_file() else []
    sheets: dict[str, list[str]] = {}
    photos: dict[str, list[str]] = {}
    for rel, cid in train:
        (photos if "/photo/" in rel else sheets).setdefault(cid, []).append(rel)
    test_photos: dict[str, list[str]] = {}
    for rel, cid in tests:
        test_photos.setdefault(cid, []).append(rel)
    classes = sorted(set(sheets) | set(photos), key=lambda c: (len(c), c))
    rows = _pick_species(classes, photos, species)
    if not rows:
        raise H2FError("no training images listed", path=root / "list" / "train.txt")

    ratios = [0.75] * per_species + [1.3] * per_species
    fig, axes = plt.subplots(
        len(rows),
        2 * per_species,
        squeeze=False,
        figsize=(sum(ratios) * 1.5 + 1.2, 1.55 * len(rows) + 0.8),
        gridspec_kw={"width_ratios": ratios, "wspace": 0.05, "hspace": 0.12},
    )
    for r, cid in enumerate(rows):
        field_list = [(p, "") for p in photos.get(cid, [])] or [(p, "test") for p in test_photos.get(cid, [])]
        herbarium = [(p, "") for p in sheets.get(cid, [])[:per_species]]
        field = field_list[:per_species]
        cells = (
            herbarium + [None] * (per_species - len(herbarium)) + field + [None] * (per_species - len(field))
        )
        for c, cell in enumerate(cells):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color(HERBARIUM_COLOR if c < per_species else FIELD_COLOR)
                side.set_linewidth(1.2)
            if cell is None:
                ax.set_facecolor("#f2f2f2")
                continue
            ax.imshow(_thumb(root / cell[0]))
            if cell[1]:
                ax.text(
                    0.03,
                    0.95,
                    cell[1],
                    transform=ax.transAxes,
                    va="top",
                    fontsize=6,
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},
                )
        paired = "with pairs" if photos.get(cid) else "without pairs"
        name = " ".join(names.get(cid, "").split()[:2])
        axes[r][0].set_ylabel(
            f"{cid}\n{name}\n({paired})", fontsize=7, rotation=0, ha="right", va="center", labelpad=6
        )
    axes[0][0].set_title(
        "herbarium sheets (train)", loc="left", fontsize=9, color=HERBARIUM_COLOR, fontweight="bold"
    )
    axes[0][per_species].set_title(
        "field photos (train, or test when none)",
        loc="left",
        fontsize=9,
        color=FIELD_COLOR,
        fontweight="bold",
    )
    fig.subplots_adjust(top=1 - 0.75 / fig.get_figheight())
    fig.suptitle(
        f"Contact sheet of {root.resolve().name}: {len(rows)} of {len(classes)} species",
        fontsize=11,
        y=1 - 0.15 / fig.get_figheight(),
    )
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.stem}.{os.getpid()}.tmp{out_png.suffix}")
    save_figure(fig, tmp)
    os.replace(tmp, out_png)  # atomic: never a half-written PNG
    return out_png
