"""Herbarium → field appearance transfer on a real synthetic sheet: each step does what it claims."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from herbarium2field.config import AugmentConfig
from herbarium2field.data.appearance import (
    appearance_transfer_steps,
    erase_marks,
    fourier_adapt,
    green_shift,
    specimen_mask,
    swap_background,
)
from herbarium2field.data.images import load_rgb


@pytest.fixture(scope="module")
def sheet_and_photo(synth_small):
    sheet = next((synth_small / "train" / "herbarium").rglob("*.jpg"))
    photo = next((synth_small / "train" / "photo").rglob("*.jpg"))
    return load_rgb(sheet), load_rgb(photo)


def hsv(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("HSV"), dtype=float)


def test_specimen_mask_finds_the_plant_not_the_paper(sheet_and_photo):
    sheet, _ = sheet_and_photo
    mask = specimen_mask(sheet)
    assert 0.03 < mask.mean() < 0.6
    val = hsv(sheet)[..., 2]
    assert val[mask].mean() < val[~mask].mean() - 40  # tissue is darker than paper


def test_green_shift_makes_tissue_green(sheet_and_photo):
    sheet, _ = sheet_and_photo
    mask = specimen_mask(sheet)
    out = np.asarray(green_shift(sheet, random.Random(0)), dtype=float)
    before = np.asarray(sheet, dtype=float)
    green_minus_red = lambda a: (a[..., 1] - a[..., 0])[mask].mean()  # noqa: E731
    assert green_minus_red(out) > green_minus_red(before) + 10
    assert np.abs(out[~mask] - before[~mask]).mean() < 1.0  # paper untouched


def test_background_swap_keeps_the_specimen_and_replaces_the_paper(sheet_and_photo):
    sheet, photo = sheet_and_photo
    out = np.asarray(swap_background(sheet, photo, random.Random(0)), dtype=float)
    before = np.asarray(sheet, dtype=float)
    mask = specimen_mask(sheet)
    assert np.abs(out[mask] - before[mask]).mean() < 25
    assert np.abs(out[~mask] - before[~mask]).mean() > 40


def test_fda_transfers_low_frequencies_only(sheet_and_photo):
    sheet, photo = sheet_and_photo
    out = fourier_adapt(sheet, photo, 0.01, random.Random(0))
    a, b = np.asarray(sheet, dtype=float), np.asarray(out, dtype=float)
    assert np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() > 5  # global colour moved towards the photo
    edges = lambda x: np.abs(np.diff(x.mean(2), axis=1))  # noqa: E731
    assert np.corrcoef(edges(a).ravel(), edges(b).ravel())[0, 1] > 0.8  # structure kept


def test_erase_marks_removes_colour_chart_patches():
    img = np.full((120, 90, 3), 235, np.uint8)
    img[10:20, 10:40] = (30, 60, 200)  # blue chart patch
    img[25:35, 10:40] = (220, 40, 40)  # red chart patch
    img[40:100, 30:60] = (110, 85, 40)  # brown leaf
    img[40:100, 65:85] = (105, 35, 30)  # red-brown dried leaf: as saturated as a red patch, but dark
    out = np.asarray(erase_marks(Image.fromarray(img)))
    assert np.abs(out[10:35, 10:40].astype(int) - 235).max() < 15
    assert (out[50:90, 35:55] == (110, 85, 40)).all()
    assert (out[50:90, 68:82] == (105, 35, 30)).all()


def test_steps_are_off_by_default_and_on_by_switch(sheet_and_photo):
    assert appearance_transfer_steps(AugmentConfig()) == []
    sheet, photo = sheet_and_photo
    (step,) = appearance_transfer_steps(AugmentConfig(green_shift=1.0, fda=1.0), field_pool=["p"],
                                        loader=lambda _: photo)
    random.seed(0)
    out = step(sheet)
    assert out.size == sheet.size
    moved = np.abs(np.asarray(out, dtype=float) - np.asarray(sheet, dtype=float)).mean()
    assert moved > 2  # the switched-on steps did change the sheet
