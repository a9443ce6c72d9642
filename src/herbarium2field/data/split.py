"""The validation split: a seeded, stratified share of the *training* images, never the test split.

Each class is split with its own random stream, derived from (seed, class id), so adding or removing a
species leaves every other species' split unchanged (seed stability across dataset versions).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def _class_rng(seed: int, class_id: str, domain: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{class_id}/{domain}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def validation_mask(train: pd.DataFrame, *, field_fraction: float, herbarium_fraction: float = 0.0,
                    seed: int = 0) -> np.ndarray:
    """Boolean mask over ``train`` rows that go to validation.

    Per class and domain, ``round(fraction * n)`` images are held out, but at least one is always left
    for training, and a class with a single image of a domain keeps it (it cannot be both learned and
    validated). Rows are taken in a seeded random order that depends only on (seed, class, domain).
    """
    mask = np.zeros(len(train), dtype=bool)
    fractions = {"field": field_fraction, "herbarium": herbarium_fraction}
    for (cid, domain), idx in train.groupby(["class_id", "domain"], observed=True).indices.items():
        frac = fractions[str(domain)]
        n = len(idx)
        if frac <= 0 or n < 2:
            continue
        k = min(max(1, int(round(frac * n))), n - 1)
        order = np.sort(np.asarray(idx))  # the table order, independent of groupby internals
        # permute paths (not positions) so the choice survives reordering of the list file
        paths = train.path.to_numpy()[order]
        perm = _class_rng(seed, str(cid), str(domain)).permutation(n)
        chosen = order[np.argsort(paths, kind="stable")][perm[:k]]
        mask[chosen] = True
    return mask
