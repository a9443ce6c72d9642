"""Leave-species-out (LSO): measure, on real photos, how a recipe does on species that have no field photos.

The species that have field photos are split into ``k`` seeded folds. For fold ``f`` its species lose their
training photos (they become herbarium-only), a model is trained — or a frozen-feature classifier refit — on
the rest, and every field photo of those species (training and test photos) is scored as a photo of a
herbarium-only species among all classes. The with-pairs group is scored by the test photos of the other
species, each test photo exactly once: a test photo of a species in fold ``g`` is scored in fold
``(g + 1) mod k``. Test photos of species that have no field photos at all (none in the shared sample) are
herbarium-only in every fold and are scored once, in fold ``i mod k`` (``i``: their order by path).

Each fold is written as a dataset of its own (``write_fold``): the AML list layout whose ``train``/``test``
folders link to the source's, ``train.txt`` without the held-out species' photos, and ``test.txt`` /
``groundtruth.txt`` listing exactly the photos the fold scores. Nothing is copied, and no photo of a held-out
species can reach training: the fold's training list is the source's minus them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from herbarium2field.data.manifest import Dataset, read_dataset
from herbarium2field.errors import H2FError
from herbarium2field.io import atomic_write_text
from herbarium2field.scoring.metrics import evaluate_ranks


@dataclass(frozen=True)
class Fold:
    index: int
    held_out: tuple[str, ...]  # class ids made herbarium-only in this fold
    train: pd.DataFrame  # the fold's training rows (the source's minus the held-out species' field photos)
    queries: pd.DataFrame  # the rows it scores: path, class_id, role ("held_out" | "with_pairs" | "without_pairs")
    test_paths: frozenset[str] = frozenset()  # the source's test photos (never used for a choice)

    @property
    def val_field_paths(self) -> set[str]:
        """Every training field photo the fold keeps (a run's validation photos are among them)."""
        return set(self.train.loc[self.train.domain == "field", "path"])


def species_folds(with_pairs: list[str] | set[str], k: int = 3, seed: int = 0) -> list[tuple[str, ...]]:
    """The species with field photos dealt into ``k`` seeded folds of (nearly) equal size."""
    species = sorted(with_pairs)
    if not 2 <= k <= len(species):
        raise H2FError(f"leave-species-out needs 2 <= k <= {len(species)} (the species with field photos), got {k}")
    order = np.random.default_rng(seed).permutation(len(species))
    return [tuple(sorted(species[i] for i in order[f::k])) for f in range(k)]


def make_folds(ds: Dataset, k: int = 3, seed: int = 0) -> list[Fold]:
    """The ``k`` folds of a dataset (see the module doc for who is scored where)."""
    if ds.layout != "aml":
        raise H2FError("leave-species-out needs the PlantCLEF/AML list layout", path=ds.root)
    groups = species_folds(ds.with_pairs, k, seed)
    fold_of = {c: f for f, g in enumerate(groups) for c in g}
    t = ds.table
    train = t[t.split == "train"]
    test = t[(t.split == "test") & t.class_id.notna()]
    natural = sorted(test.loc[~test.class_id.isin(fold_of), "path"])  # herbarium-only everywhere
    natural_fold = {p: i % k for i, p in enumerate(natural)}
    folds = []
    for f, held in enumerate(groups):
        own = t[t.class_id.isin(held) & (t.domain == "field")]  # training photos and test photos alike
        others = test[test.class_id.map(fold_of).eq((f - 1) % k)]
        wild = test[test.path.map(natural_fold).eq(f)]
        queries = pd.concat([own.assign(role="held_out"), others.assign(role="with_pairs"),
                             wild.assign(role="without_pairs")], ignore_index=True)
        keep = ~(train.class_id.isin(held) & (train.domain == "field"))
        folds.append(Fold(f, held, train[keep].reset_index(drop=True),
                          queries[["path", "class_id", "role"]].reset_index(drop=True), frozenset(test.path)))
    return folds


def write_fold(ds: Dataset, fold: Fold, out: Path) -> Path:
    """Write the fold as an AML-layout dataset at ``out`` (lists only; image folders are links)."""
    out = Path(out)
    lists = out / "list"
    lists.mkdir(parents=True, exist_ok=True)
    src = ds.root / "list"
    atomic_write_text(lists / "species_list.txt", (src / "species_list.txt").read_text())
    atomic_write_text(lists / "train.txt", "".join(f"{p} {c}\n" for p, c in zip(fold.train.path, fold.train.class_id,
                                                                                  strict=True)))
    q = fold.queries
    atomic_write_text(lists / "test.txt", "".join(f"{p}\n" for p in q.path))
    atomic_write_text(lists / "groundtruth.txt", "".join(f"{p} {c}\n" for p, c in zip(q.path, q.class_id,
                                                                                        strict=True)))
    pairs = sorted(set(fold.train.loc[fold.train.domain == "field", "class_id"]))
    atomic_write_text(lists / "class_with_pairs.txt", "".join(f"{c}\n" for c in pairs))
    atomic_write_text(lists / "class_without_pairs.txt",
                      "".join(f"{c}\n" for c in ds.class_ids if c not in set(pairs)))
    for folder in ("train", "test"):
        link = out / folder
        if link.is_symlink():
            link.unlink()
        if (ds.root / folder).exists() and not link.exists():
            os.symlink((ds.root / folder).resolve(), link, target_is_directory=True)
    return out


def prepare_folds(root: Path, work: Path, *, k: int = 3, seed: int = 0) -> list[tuple[Fold, Path]]:
    """Every fold of the dataset at ``root``, written under ``work/fold<i>`` (rewritten each time: cheap)."""
    ds = read_dataset(root, check="exists")
    return [(fold, write_fold(ds, fold, Path(work) / f"fold{fold.index}")) for fold in make_folds(ds, k, seed)]


# ---- running a recipe under leave-species-out -------------------------------------------------------------


@dataclass
class LsoOutcome:
    """Pooled answers of one recipe over the folds: one row per scored photo."""

    hits: pd.DataFrame  # path, fold, group, class_id, rank
    n_classes: int
    trainings: int  # trained or fitted in this call
    minutes: float  # training / fitting time, summed over the folds (measured when they were made)

    def metrics(self, *, n_boot: int = 1000, seed: int = 0) -> dict:
        labels = np.zeros(len(self.hits), dtype=np.int64)  # the rank is all that counts; -1 never occurs
        groups = {g: (self.hits.group == g).to_numpy() for g in ("with_pairs", "without_pairs")}
        return evaluate_ranks(self.hits["rank"].to_numpy(), labels, self.n_classes, groups, ks=(1, 3, 5, 10),
                              n_boot=n_boot, seed=seed)


def fold_hits(fold: Fold, eval_dir: Path) -> pd.DataFrame:
    """A fold's evaluation (``predictions.csv``) as pooled rows, each photo with its role's group."""
    pred = pd.read_csv(eval_dir / "predictions.csv", dtype={"true_class_id": str})
    role = dict(zip(fold.queries.path, fold.queries.role, strict=True))
    group = pred["image"].map(role).map({"held_out": "without_pairs", "without_pairs": "without_pairs",
                                         "with_pairs": "with_pairs"})
    if group.isna().any():
        raise H2FError(f"fold {fold.index}: {int(group.isna().sum())} scored photo(s) are not the fold's queries",
                       path=eval_dir)
    return pd.DataFrame({"path": pred["image"], "fold": fold.index, "group": group,
                         "class_id": pred["true_class_id"], "rank": pred["rank"].astype(int)})


def selection_hits(fold: Fold, test_eval: Path, val_eval: Path) -> pd.DataFrame:
    """The fold's answers that may guide a choice (no test photo among them): the held-out species'
    *training* photos (herbarium-only role) and the run's validation field photos (species with photos)."""
    held = fold_hits(fold, test_eval)
    held = held[(held.group == "without_pairs") & ~held.path.isin(fold.test_paths)]
    pred = pd.read_csv(val_eval / "predictions.csv", dtype={"true_class_id": str})
    field = pred[pred["image"].isin(fold.val_field_paths)]
    val = pd.DataFrame({"path": field["image"], "fold": fold.index, "group": "with_pairs",
                        "class_id": field["true_class_id"], "rank": field["rank"].astype(int)})
    return pd.concat([held, val], ignore_index=True)


def excluded_paths(ds: Dataset, fold: Fold) -> set[str]:
    """Training images of the source that the fold leaves out (the held-out species' photos)."""
    return set(ds.split("train").path) - set(fold.train.path)
