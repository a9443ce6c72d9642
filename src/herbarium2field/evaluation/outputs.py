"""A run's outputs on one split of its dataset: the rows, their labels, embeddings and class scores.

Works for both kinds of run directory — a trained network (``h2f train``) and a classical classifier on
frozen features (``h2f fit-classic``) — so evaluation, t-SNE and reports treat them alike. Network
outputs are cached in ``runs/<name>/embeddings/`` and recomputed when the checkpoint or the image list
changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from herbarium2field.data.manifest import Dataset, labels_of, read_dataset
from herbarium2field.errors import H2FError
from herbarium2field.io import atomic_path
from herbarium2field.training.run_dir import ModelCard, RunPaths

SPLITS = ("train", "val", "test")


@dataclass
class SplitOutputs:
    split: str
    table: pd.DataFrame  # manifest rows, in output order
    labels: np.ndarray  # class index per row (card order); -1 = unlabelled or unknown species
    embeddings: np.ndarray  # [N, D], L2-normalised
    scores: np.ndarray  # [N, C] classifier scores (ArcFace: s·cosθ; softmax: logits; classic: its scores)
    card: ModelCard
    images_per_s: float | None = None

    @property
    def domains(self) -> np.ndarray:
        return (self.table.domain.astype(str).to_numpy() == "field").astype(np.int64)

    @property
    def with_pairs(self) -> np.ndarray:
        """Per row: does the row's species have field photos in *training* (the benchmark's groups)."""
        pairs = set(self.card.with_pairs)
        return np.array([isinstance(c, str) and c in pairs for c in self.table.class_id.tolist()], dtype=bool)


@dataclass(frozen=True)
class SplitParams:
    """How a run split its training images into train/validation (``data.split.validation_mask``)."""

    field_fraction: float
    herbarium_fraction: float
    seed: int


def split_params(run: Path, card: ModelCard) -> SplitParams | None:
    """The run's validation split: from ``config.yaml`` (``h2f train``), else from fields a classic run's
    card records (``model.val_field_fraction`` / ``model.seed``); ``None`` when the run says nothing."""
    from herbarium2field.config import load_config

    config = RunPaths(Path(run)).config
    if config.is_file():
        cfg = load_config(config)
        d = cfg.data
        seed = cfg.seed if d.val_seed is None else d.val_seed
        return SplitParams(d.val_field_fraction, d.val_herbarium_fraction, seed)
    m = card.model or {}
    if m.get("val_field_fraction"):
        return SplitParams(
            float(m["val_field_fraction"]), float(m.get("val_herbarium_fraction", 0.0)), int(m.get("seed", 0))
        )
    return None



def inference_config(run: str | Path):  # type: ignore[no-untyped-def]
    """The run's default ranking (``inference:`` in its config); classifier for runs without a config."""
    from herbarium2field.config import InferenceConfig, load_config

    cfg = RunPaths(Path(run)).config
    return load_config(cfg).inference if cfg.is_file() else InferenceConfig()


def dataset_for(card: ModelCard, data: str | Path | None, *, allow_missing: bool = False) -> Dataset:
    """The run's dataset (or another root with the same species), checked for missing images."""
    root = data or card.dataset.get("root")
    if root is None:
        raise H2FError("the run does not record its dataset; pass --data ROOT")
    if not Path(root).exists():
        raise H2FError("the run's dataset is not here", path=root, hint="pass --data ROOT")
    return read_dataset(root, check="exists", allow_missing=allow_missing)


def split_table(run: Path, ds: Dataset, split: str) -> pd.DataFrame:
    """Rows of ``split``: ``test``; or the run's own ``train``/``val`` partition of the training images."""
    if split not in SPLITS:
        raise H2FError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if split == "test":
        return ds.split("test")
    from herbarium2field.data.split import validation_mask

    train = ds.split("train")
    params = split_params(run, ModelCard.load(RunPaths(run).card))
    if params is None:  # e.g. a classic run fitted on every training image
        if split == "val":
            raise H2FError("this run has no validation split (it was fitted on all training images)", path=run,
                           hint="fit it with --val-field-fraction to hold some field photos out")
        return train
    mask = validation_mask(train, field_fraction=params.field_fraction,
                           herbarium_fraction=params.herbarium_fraction, seed=params.seed)
    return train[mask if split == "val" else ~mask].reset_index(drop=True)


def labels_for(table: pd.DataFrame, card: ModelCard) -> np.ndarray:
    """Class indices in the model's class order (-1: unlabelled, or a species the model does not know)."""
    return labels_of(table, {c: i for i, c in enumerate(card.class_ids)})


def split_outputs(run: str | Path, split: str = "test", *, data: str | Path | None = None, tta: str | None = None,
                  allow_missing: bool = False, progress: bool = False, batch_size: int = 64,
                  num_workers: int = 2) -> SplitOutputs:
    """Embeddings and scores of a run on a split (cached for networks)."""
    run = Path(run)
    card = ModelCard.load(RunPaths(run).card)
    if card.kind == "classic":
        from herbarium2field.features.classic import classic_split_scores

        if tta:
            raise H2FError("--tta needs a network run: a classic run scores cached features")
        table, scores, emb = classic_split_scores(run, split, data_root=data)
        return SplitOutputs(split, table.reset_index(drop=True), labels_for(table, card), emb, scores, card)
    ds = dataset_for(card, data, allow_missing=allow_missing)
    table = split_table(run, ds, split)
    if len(table) == 0:
        raise H2FError(f"the {split} split of this dataset is empty", path=ds.root)
    cache = _cache_file(run, split, table, tta)
    if cache.is_file():
        with np.load(cache) as z:
            return SplitOutputs(split, table, labels_for(table, card), z["embeddings"], z["scores"], card)
    from herbarium2field.data.datamodule import image_source
    from herbarium2field.models.backbones import Preprocessing
    from herbarium2field.models.predict import run_network
    from herbarium2field.training.run_dir import load_network

    net, card, _ = load_network(run)
    pre = Preprocessing.from_dict(card.preprocessing)
    out = run_network(net, table, image_source(ds, min_size=pre.input_size), pre, tta=tta, batch_size=batch_size,
                      num_workers=num_workers, progress=progress, description=f"{run.name}: {split}")
    assert out.logits is not None
    for old in cache.parent.glob(f"{split}{'-' + tta if tta else ''}-*.npz"):
        old.unlink()
    with atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.savez(f, embeddings=out.embeddings, scores=out.logits)
    return SplitOutputs(split, table, labels_for(table, card), out.embeddings, out.logits, card, out.images_per_s)


def _cache_file(run: Path, split: str, table: pd.DataFrame, tta: str | None) -> Path:
    """Keyed by the checkpoint file's identity and the exact image list, so any change recomputes."""
    ckpt = RunPaths(run).best
    st = ckpt.stat() if ckpt.is_file() else None
    key = hashlib.sha256()
    key.update(f"{st.st_size if st else 0}/{st.st_mtime_ns if st else 0}/{tta}".encode())
    key.update("\n".join(table.path.tolist()).encode())
    return run / "embeddings" / f"{split}{'-' + tta if tta else ''}-{key.hexdigest()[:16]}.npz"
