"""Frozen features + a classical classifier as a training recipe (``recipe: frozen`` in an experiment config),
so that ``h2f train CONFIG`` runs it like any network recipe and it competes in the same benchmarks.

The config's ``model.backbone`` / ``model.weights`` / ``data.image_size`` name the frozen extractor; the
``frozen:`` section the classifier (``logreg``, ``svm``, ``knn``, ``ncm``), its options and the domain
alignment; ``data.val_*`` the validation split (the same split a network run makes); ``inference:`` how the
run ranks species. Training = embedding every image into ``runs/<name>/features/`` (resumable) and fitting
the classifier (seconds); the run directory then holds everything ``h2f train`` writes for a network.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from herbarium2field.config import ExperimentConfig, save_config
from herbarium2field.errors import H2FError
from herbarium2field.features.classic import fit_classic, save_classic
from herbarium2field.features.extract import embed_dataset
from herbarium2field.features.store import load_features
from herbarium2field.models.frozen import ExtractorSpec
from herbarium2field.paths import runs_dir
from herbarium2field.run.paths import RunPaths
from herbarium2field.training.train import train


def train_recipe(cfg: ExperimentConfig, *, resume: Path | None = None, progress: bool = True,
                 runs_root: Path | None = None) -> RunPaths:
    """Train the config's recipe: a network (:func:`herbarium2field.training.train.train`) or frozen features."""
    if cfg.recipe == "network":
        return train(cfg, resume=resume, progress=progress, runs_root=runs_root)
    if resume is not None:  # embedding resumes by itself, fitting takes seconds: start the fit again
        paths = RunPaths(Path(resume))
        for f in (paths.card, paths.classifier):
            f.unlink(missing_ok=True)
        return train_frozen(cfg, progress=progress, runs_root=paths.root.parent)
    return train_frozen(cfg, progress=progress, runs_root=runs_root)


def train_frozen(cfg: ExperimentConfig, *, progress: bool = True, runs_root: Path | None = None,
                 features: Path | None = None, exclude: Collection[str] = ()) -> RunPaths:
    """Embed the dataset with the frozen backbone and fit the classifier; writes ``runs_root/<name>``.

    ``features``: an embedding cache to use (default: ``<run>/features``); ``exclude``: training images (paths as
    listed) left out of fitting, e.g. the photos of species a benchmark makes herbarium-only.
    """
    paths = RunPaths((runs_root or runs_dir()) / cfg.name)
    if paths.card.is_file():
        raise H2FError("run directory already holds a model", path=paths.root, hint="pick another --name")
    m, d, f = cfg.model, cfg.data, cfg.frozen
    if not (m.weights or m.pretrained):
        raise H2FError("a frozen-feature recipe needs pretrained weights: set model.weights (a file or "
                       "efficientnet_lite0:offline) or model.pretrained: true")
    spec = ExtractorSpec(backbone=m.backbone, weights=m.weights, pretrained=m.pretrained, size=d.image_size,
                         grey=d.grey)
    cache = features or paths.root / "features"
    embed_dataset(d.root, cache, spec, batch_size=d.eval_batch_size or d.batch_size, num_workers=d.num_workers,
                  allow_missing=d.allow_missing, progress=progress)
    feats = load_features(cache)
    train_mask = ~feats.table.path.isin(set(exclude)).to_numpy() if exclude else None
    model = fit_classic(feats, f.classifier, dict(f.options), align=f.align, align_reg=f.align_reg, domains=f.domains,
                        train_mask=train_mask, val_field_fraction=d.val_field_fraction,
                        seed=cfg.seed if d.val_seed is None else d.val_seed, name=cfg.name)
    paths.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)
    return save_classic(model, paths.root, force=True, inference=cfg.inference, num_workers=d.num_workers)
