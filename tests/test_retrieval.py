"""The herbarium gallery and its faiss index: exact vs approximate search, class slices, thumbnails, ids."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from herbarium2field.errors import H2FError
from herbarium2field.retrieval import index as index_mod
from herbarium2field.retrieval.gallery import Gallery, _unique_ids
from herbarium2field.retrieval.index import build_index, ivf_params, load_index, save_index, search
from herbarium2field.run.fingerprint import images_fingerprint


def clustered(n: int, d: int = 32, classes: int = 50, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """Unit vectors around class centres, like the embeddings of a trained model."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d))
    x = centres[rng.integers(0, classes, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_index_finds_the_true_neighbours():
    x = clustered(500)
    index, spec = build_index(x)
    assert spec.kind == "flat" and spec.size == 500 and "exact" in spec.describe()
    sims, ids = search(index, x[:5], 3)
    assert (ids[:, 0] == np.arange(5)).all() and np.allclose(sims[:, 0], 1.0, atol=1e-5)
    want = np.argsort(-(x @ x[7]))[:10]
    assert list(search(index, x[7], 10)[1][0]) == list(want)
    sims, ids = search(index, x[0], 10_000)  # k larger than the gallery is clipped
    assert ids.shape == (1, 500)


def test_approximate_index_has_high_recall(monkeypatch, tmp_path):
    x, q = clustered(6000, seed=1), clustered(200, seed=1)[::-1].copy()
    monkeypatch.setattr(index_mod, "EXACT_MAX", 1000)
    approx, spec = build_index(x)  # auto: above EXACT_MAX -> IVF
    assert spec.kind == "ivf" and (spec.nlist, spec.nprobe) == ivf_params(6000) and spec.nprobe < spec.nlist
    exact, _ = build_index(x, kind="flat")
    _, want = search(exact, q, 10)
    _, got = search(approx, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got, strict=True)])
    assert recall >= 0.9
    save_index(approx, tmp_path / "ivf.faiss")
    again = load_index(tmp_path / "ivf.faiss", spec)
    assert (search(again, q, 10)[1] == got).all()
    with pytest.raises(H2FError, match="index"):
        build_index(np.zeros((0, 8), np.float32))
    (tmp_path / "bad.faiss").write_bytes(b"nope")
    with pytest.raises(H2FError, match="rebuild"):
        load_index(tmp_path / "bad.faiss")


def test_gallery_rows_are_class_slices_and_sheets_come_from_their_species(identify_run):  # noqa: F811
    g = Gallery.load(identify_run)
    table = g.table
    assert len(g) == len(table) == g.index.ntotal == g.embeddings.shape[0]
    assert np.allclose(np.linalg.norm(g.embeddings, axis=1), 1.0, atol=1e-4)
    assert (table.path.str.startswith("train/herbarium/")).all()
    for cid, (start, end) in g.slices.items():
        assert (table.class_id.iloc[start:end] == cid).all() and (table.class_id == cid).sum() == end - start
    q = np.asarray(g.embeddings[[0, 5]])
    cid = table.class_id.iloc[-1]
    best = g.best_in_class(q, cid, k=4)
    assert best and all(m.class_id == cid for m in best)
    sims = [m.similarity for m in best]
    assert sims == sorted(sims, reverse=True) and all(m.photo in (0, 1) for m in best)
    assert g.best_in_class(q, "no-such-class") == []
    near = g.nearest(q[:1], k=5)
    assert near[0].row == 0 and near[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert len({m.row for m in near}) == len(near) == 5


def test_thumbnails_are_served_by_gallery_id_only(identify_run):  # noqa: F811
    g = Gallery.load(identify_run)
    gid = g.table.gallery_id.iloc[3]
    img = Image.open(io.BytesIO(g.thumbnail(gid)))
    assert img.format == "JPEG" and max(img.size) <= 256
    for probe in ("../../etc/passwd", "thumbs.bin", str(identify_run / "gallery" / "thumbs.bin"), "", "0"):
        assert g.thumbnail(probe) is None


def test_gallery_ids_are_unique_even_with_repeated_file_names():
    assert _unique_ids(["1", "2", "IMG_1", "IMG_1"], ["a", "a", "a", "b"]) == ["1", "2", "a-IMG_1", "b-IMG_1"]


def test_images_fingerprint_follows_content_changes(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    rows = [("a.jpg", "1"), ("missing.jpg", "2")]
    fp = images_fingerprint(tmp_path, rows)
    assert fp == images_fingerprint(tmp_path, list(reversed(rows)))  # order does not matter
    assert fp != images_fingerprint(tmp_path, [("a.jpg", "9"), ("missing.jpg", "2")])  # class changes count
    (tmp_path / "a.jpg").write_bytes(b"xy")
    assert fp != images_fingerprint(tmp_path, rows)


def test_missing_gallery_says_how_to_build_it(tmp_path):
    with pytest.raises(H2FError, match="h2f index"):
        Gallery.load(tmp_path)
