"""Derived datasets for experiments: move species to the "without pairs" group by dropping their training
field photos, without copying a single image (the new root links to the original image folders).

This is how the real sample measures the without-pairs group on real plants: its test photos are all of
species that have field photos in training, so a few of them are made herbarium-only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from herbarium2field.data.manifest import read_dataset
from herbarium2field.errors import H2FError
from herbarium2field.io import atomic_write_text


def drop_field_photos(src: Path, out: Path, *, class_ids: list[str] | None = None, n: int | None = None,
                      seed: int = 0) -> list[str]:
    """Write an AML-layout dataset at ``out`` equal to ``src`` minus the training field photos of some species.

    Choose the species by ``class_ids`` or as ``n`` random species with pairs (seeded). Images are not
    copied: ``out/train`` and ``out/test`` are symbolic links to ``src``'s folders. Returns the class ids
    moved to "without pairs".
    """
    ds = read_dataset(src, check="none")
    if ds.layout != "aml":
        raise H2FError("deriving needs the PlantCLEF/AML list layout", path=src)
    pairs = sorted(ds.with_pairs)
    if class_ids is None:
        if n is None or not 0 < n < len(pairs):
            raise H2FError(f"choose 1..{len(pairs) - 1} species to move (the dataset has {len(pairs)} with pairs)")
        class_ids = sorted(np.random.default_rng(seed).choice(pairs, size=n, replace=False).tolist())
    unknown = sorted(set(class_ids) - set(pairs))
    if unknown:
        raise H2FError(f"not species with field photos: {', '.join(unknown)}", path=src)
    moved = set(class_ids)
    out.mkdir(parents=True, exist_ok=True)
    lists = out / "list"
    lists.mkdir(exist_ok=True)
    src_lists = ds.root / "list"
    for name in ("test.txt", "groundtruth.txt", "species_list.txt"):
        if (src_lists / name).is_file():
            atomic_write_text(lists / name, (src_lists / name).read_text())
    train = ds.split("train")
    keep = ~((train.domain == "field") & train.class_id.isin(moved))
    atomic_write_text(lists / "train.txt", "".join(f"{p} {c}\n" for p, c in zip(train.path[keep], train.class_id[keep],
                                                                                   strict=True)))
    with_pairs = [c for c in ds.class_ids if c in set(pairs) - moved]
    without = [c for c in ds.class_ids if c not in set(with_pairs)]
    atomic_write_text(lists / "class_with_pairs.txt", "".join(f"{c}\n" for c in with_pairs))
    atomic_write_text(lists / "class_without_pairs.txt", "".join(f"{c}\n" for c in without))
    for folder in ("train", "test"):
        link = out / folder
        if link.is_symlink():
            link.unlink()
        if (ds.root / folder).exists():
            os.symlink((ds.root / folder).resolve(), link, target_is_directory=True)
    return sorted(moved)
