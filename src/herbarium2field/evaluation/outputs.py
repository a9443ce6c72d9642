"""A run's outputs on one split of a dataset: the rows, their labels, embeddings and the head's scores.

Works for every kind of run (a trained network, a classical classifier on frozen features) through
:func:`~herbarium2field.run.load.load_model`, so evaluation, t-SNE and reports treat them alike. The
``train``/``val`` splits are the run's own (``split.json``); ``test`` is the dataset's. Network outputs are
cached in ``runs/<name>/embeddings/`` (keyed by the weights fingerprint and the exact image list); a classic
run evaluated on its own dataset reads its feature cache instead of embedding again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from herbarium2field.data.loaders import image_source
from herbarium2field.data.manifest import Dataset, labels_of, read_dataset
from herbarium2field.errors import H2FError
from herbarium2field.features.store import CacheSpec, load_features
from herbarium2field.io import atomic_path
from herbarium2field.models.inference import infer_table
from herbarium2field.run.artefacts import Split
from herbarium2field.run.card import ModelCard
from herbarium2field.run.load import RunModel
from herbarium2field.run.paths import RunPaths

SPLITS = ("train", "val", "test")


@dataclass
class SplitOutputs:
    split: str
    table: pd.DataFrame  # manifest rows, in output order
    labels: np.ndarray  # class index per row (card order); -1 = unlabelled or unknown species
    embeddings: np.ndarray  # [N, D], L2-normalised (NaN: unreadable, with allow_missing)
    logits: np.ndarray | None  # [N, C] head logits of a network; None for a classic run
    card: ModelCard
    images_per_s: float | None = None
    branch: np.ndarray | None = None  # [N, D] the photos as the sheet branch sees them (reserved places)

    @property
    def domains(self) -> np.ndarray:
        d = self.table.domain if "domain" in self.table else pd.Series(["field"] * len(self.table))
        return (d.astype(str).to_numpy() == "field").astype(np.int64)

    @property
    def with_pairs(self) -> np.ndarray:
        """Per row: does the row's species have field photos in *training* (the benchmark's groups)."""
        pairs = set(self.card.with_pairs)
        return np.array([isinstance(c, str) and c in pairs for c in self.table.class_id.tolist()], dtype=bool)


def dataset_for(card: ModelCard, data: str | Path | None, *, allow_missing: bool = False,
                check: str = "exists") -> Dataset:
    """The dataset to evaluate on: ``data``, else the one the run was trained on."""
    root = data or card.dataset.get("root")
    if root is None:
        raise H2FError("the run does not record its dataset; pass --data ROOT")
    if not Path(root).exists():
        raise H2FError("the dataset is not here", path=root,
                       hint="pass --data ROOT (evaluation needs labelled images; identification does not)")
    return read_dataset(root, check=check, allow_missing=allow_missing)  # type: ignore[arg-type]


def split_table(run: Path, ds: Dataset, split: str) -> pd.DataFrame:
    """Rows of ``split``: the dataset's ``test``; or the run's own ``train``/``val`` partition of its training
    images, exactly as recorded in ``split.json``."""
    if split not in SPLITS:
        raise H2FError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if split == "test":
        return ds.split("test")
    train = ds.split("train")
    val = set(Split.load(run).val_paths)
    if split == "val" and not val:
        raise H2FError("this run has no validation split (it was fitted on all training images)", path=run,
                       hint="train or fit it with a validation share (--val-field-fraction)")
    mask = train.path.isin(val).to_numpy()
    return train[mask if split == "val" else ~mask].reset_index(drop=True)


def split_outputs(model: RunModel, split: str = "test", *, data: str | Path | None = None, tta: str | None = None,
                  allow_missing: bool = False, progress: bool = False, batch_size: int = 64,
                  num_workers: int = 2) -> SplitOutputs:
    """Embeddings and head scores of a run on a split (cached)."""
    run, card = model.run, model.card
    ds = dataset_for(card, data, allow_missing=allow_missing)
    table = split_table(run, ds, split)
    if len(table) == 0:
        raise H2FError(f"the {split} split of this dataset is empty", path=ds.root)
    labels = labels_of(table, {c: i for i, c in enumerate(card.class_ids)})
    branch = model.branch_extractor
    if card.kind == "classic" and tta is None and branch is None:
        cached = _classic_cached(card, ds, table)
        if cached is not None:
            return SplitOutputs(split, table, labels, cached, None, card)
    cache = _cache_file(run, card, split, table, tta, model.backend, branch is not None)
    if cache.is_file():
        with np.load(cache) as z:
            logits = z["logits"] if "logits" in z.files else None
            extra = z["branch"] if "branch" in z.files else None
            return SplitOutputs(split, table, labels, z["embeddings"], logits, card, branch=extra)
    out = infer_table(model.extractor, table, image_source(ds, min_size=model.pre.input_size),
                      errors="nan" if allow_missing else "raise", tta=tta, batch_size=batch_size,
                      num_workers=num_workers, progress=progress, description=f"{run.name}: {split}", branch=branch)
    arrays = {"embeddings": out.embeddings} | ({"logits": out.logits} if out.logits is not None else {})
    if out.branch is not None:
        arrays["branch"] = out.branch
    with atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return SplitOutputs(split, table, labels, out.embeddings, out.logits, card, out.images_per_s, out.branch)


def _classic_cached(card: ModelCard, ds: Dataset, table: pd.DataFrame) -> np.ndarray | None:
    """Embeddings of ``table`` from the classic run's own feature cache, when it holds every row's image and is
    the cache the model was fitted on; None otherwise (the rows are then embedded with the frozen backbone).

    Rows are matched by the file they resolve to, so a dataset derived from the cached one (linked image
    folders, other lists: a leave-species-out fold) is served from the cache too."""
    path = card.model.get("features")
    if not path or not Path(path, "meta.json").is_file():
        return None
    feats = load_features(path)
    if CacheSpec(**card.model["features_spec"]).differences(feats.spec):
        return None
    same_root = Path(feats.spec.dataset_root).resolve() == Path(ds.root).resolve()
    if same_root:
        row = {p: i for i, p in enumerate(feats.table.path.astype(str))}
        idx = [row.get(p) for p in table.path.astype(str)]
    else:
        cached = Path(feats.spec.dataset_root)
        row = {(cached / p).resolve(): i for i, p in enumerate(feats.table.path.astype(str))}
        idx = [row.get((Path(ds.root) / p).resolve()) for p in table.path.astype(str)]
    if any(i is None for i in idx):
        return None
    emb = feats.embeddings[np.asarray(idx)]
    emb[~feats.table.ok.to_numpy()[np.asarray(idx)]] = np.nan
    return emb


def _cache_file(run: Path, card: ModelCard, split: str, table: pd.DataFrame, tta: str | None,
                backend: str, branch: bool) -> Path:
    """Keyed by the weights fingerprint, the backend, the branch and the exact image list, so any change
    recomputes (several lists of one split live side by side: a run is evaluated on several datasets)."""
    key = hashlib.sha256()
    key.update(f"{card.fingerprint.get('sha256')}/{backend}/{tta}/{branch}".encode())
    key.update("\n".join(table.path.tolist()).encode())
    return RunPaths(run).embeddings / f"{split}{'-' + tta if tta else ''}-{key.hexdigest()[:16]}.npz"
