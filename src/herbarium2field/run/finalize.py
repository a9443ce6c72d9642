"""What the end of training (and of ``h2f fit-classic``) writes into the run, so that identification,
serving, export and evaluation on new data need the run directory alone:

1. ``split.json``: the validation split (its parameters and image paths), made once by the caller;
2. ``prototypes.npz``: class means of the training embeddings per domain (every prototype source);
3. ``validation.npz``: the validation images' embeddings and head logits;
4. ``inference.json``: how the run ranks species (the config's ``inference:``; a ``calibrated`` prototype
   source is resolved here on the validation photos);
5. ``calibration.json``: the "no confident match" threshold under that ranking.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from herbarium2field.config import InferenceConfig, load_config
from herbarium2field.data.cache import ImageSource
from herbarium2field.data.datasets import DOMAIN_CODES
from herbarium2field.data.loaders import image_source
from herbarium2field.data.manifest import Dataset, labels_of
from herbarium2field.data.sheet_views import SheetViewDataset, SheetViews
from herbarium2field.data.split import validation_mask
from herbarium2field.models.inference import infer_table
from herbarium2field.progress import image_progress
from herbarium2field.run.artefacts import (
    Branch,
    InferenceChoice,
    Split,
    ValidationSet,
    save_calibration,
    save_class_means,
)
from herbarium2field.run.card import ModelCard
from herbarium2field.run.fingerprint import weights_file, weights_fingerprint
from herbarium2field.run.load import RunModel, Scorer, load_model
from herbarium2field.run.paths import RunPaths
from herbarium2field.scoring.choice import choose_ranking
from herbarium2field.scoring.combine import compare_combinations, log_probabilities
from herbarium2field.scoring.prototypes import ClassMeans, calibrate_shift
from herbarium2field.scoring.threshold import DEFAULT_TARGET, MIN_ACCEPTED, choose_threshold


def make_split(train: pd.DataFrame, *, field_fraction: float, herbarium_fraction: float = 0.0, seed: int = 0
               ) -> tuple[Split, pd.DataFrame, pd.DataFrame]:
    """The validation split of a dataset's training rows (:func:`validation_mask`) as the run records it,
    with the two tables ``(split, train, val)``."""
    mask = validation_mask(train, field_fraction=field_fraction, herbarium_fraction=herbarium_fraction, seed=seed)
    val = train[mask].reset_index(drop=True)
    split = Split(field_fraction, herbarium_fraction, seed, val.path.astype(str).tolist())
    return split, train[~mask].reset_index(drop=True), val


def split_tables(split: Split, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, val)`` rows of a dataset's training table under a recorded split."""
    mask = train.path.isin(set(split.val_paths)).to_numpy()
    return train[~mask].reset_index(drop=True), train[mask].reset_index(drop=True)


def stamp_card(run: Path, card: ModelCard, weights: Path) -> ModelCard:
    """Record the weights file's fingerprint in the card (what every derived artefact is checked against)."""
    card.fingerprint = weights_fingerprint(run, weights)
    card.checkpoint = card.fingerprint["file"]
    card.save(RunPaths(run).card)
    return card


def finalize(run: Path, ds: Dataset, split: Split, *, declared: InferenceConfig, scale: float = 15.0,
             cache_size: int | None = None, use_cache: bool = True, **kw: Any) -> InferenceChoice:
    """Load the run's model (torch) and write what inference needs, from the dataset it was trained on."""
    model = load_model(run, "torch", require_choice=False)
    train, val = split_tables(split, ds.split("train"))
    source = image_source(ds, cache=use_cache, size=cache_size, min_size=model.pre.input_size)
    return finalize_run(model, split, train, val, source, declared=declared, scale=scale, **kw)


def domain_codes(table: pd.DataFrame) -> np.ndarray:
    return np.array([DOMAIN_CODES[str(d)] for d in table.domain], dtype=np.int64)


def finalize_run(model: RunModel, split: Split, train: pd.DataFrame, val: pd.DataFrame, source: ImageSource, *,
                 declared: InferenceConfig, scale: float = 15.0, target: float = DEFAULT_TARGET,
                 batch_size: int = 64, num_workers: int = 2, progress: bool = False) -> InferenceChoice:
    """Embed the training and validation images with the run's model and write every artefact above."""
    card = model.card
    index = {c: i for i, c in enumerate(card.class_ids)}
    kw = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}
    train_out = _infer(model, train, source, description="prototypes: training images", **kw)
    val_out = _infer(model, val, source, description="validation images", **kw)
    means = ClassMeans.from_embeddings(train_out[0], labels_of(train, index), domain_codes(train), card.num_classes)
    vset = ValidationSet(val.path.astype(str).to_numpy(), labels_of(val, index), domain_codes(val), *val_out)
    sheets = pd.concat([train, val])
    sheets = sheets[sheets.domain == "herbarium"]
    if declared.branch is not None:
        compute_branch(model, Path(source.root), sheets, declared.branch.model_dump(), **kw).save(model.run, card)
    return write_inference_artefacts(model, split, means, vset, declared=declared, scale=scale, target=target)


def compute_branch(model: RunModel, root: Path, sheets: pd.DataFrame, settings: dict[str, Any], *,
                   batch_size: int = 64, num_workers: int = 2, progress: bool = False) -> Branch:
    """Embed every view of every sheet (``data.sheet_views``) with the run's extractor."""
    data = SheetViewDataset(root, sheets.path.astype(str).tolist(), SheetViews(**settings), model.pre)
    loader = DataLoader(data, batch_size=None, num_workers=num_workers)
    index = {c: i for i, c in enumerate(model.card.class_ids)}
    classes = [index.get(str(c), -1) for c in sheets.class_id]
    views: list[np.ndarray] = []
    owners: list[int] = []
    pending: list[torch.Tensor] = []
    pending_owner: list[int] = []

    def flush() -> None:
        if pending:
            views.append(model.extractor(torch.cat(pending))[0])
            owners.extend(pending_owner)
            pending.clear()
            pending_owner.clear()

    with image_progress(len(data), "herbarium sheet views", show=progress) as advance:
        for x, i in loader:
            if len(x) and classes[int(i)] >= 0:
                pending.append(x)
                pending_owner.extend([classes[int(i)]] * len(x))
                if sum(len(t) for t in pending) >= batch_size:
                    flush()
            advance(1)
    flush()
    emb = np.concatenate(views) if views else np.zeros((0, model.extractor.dim), np.float32)
    return Branch(emb.astype(np.float32), np.asarray(owners, dtype=np.int64), dict(settings))


def _infer(model: RunModel, table: pd.DataFrame, source: ImageSource, **kw: Any
           ) -> tuple[np.ndarray, np.ndarray | None]:
    if len(table) == 0:
        ex = model.extractor
        return np.zeros((0, ex.dim), np.float32), (None if ex.num_classes is None
                                                   else np.zeros((0, ex.num_classes), np.float32))
    out = infer_table(model.extractor, table, source, errors="nan", **kw)
    return out.embeddings, out.logits


def write_inference_artefacts(model: RunModel, split: Split, means: ClassMeans, val: ValidationSet, *,
                              declared: InferenceConfig, scale: float = 15.0,
                              target: float = DEFAULT_TARGET) -> InferenceChoice:
    """Save class means, split and validation outputs, then choose the ranking and calibrate its threshold."""
    run, card = model.run, model.card
    split.save(run)
    save_class_means(run, card, means)
    val.save(run, card)
    choice = choose_inference(means, val, declared=declared, scale=scale, classifier=model.classifier)
    choice.save(run, card)
    model.choice, model.scorer = choice, model.scorer_for(choice)
    save_calibration(run, card, calibrate_threshold(model, val, target=target))
    return choice


def choose_inference(means: ClassMeans, val: ValidationSet, *, declared: InferenceConfig, scale: float = 15.0,
                     classifier: Scorer | None = None) -> InferenceChoice:
    """The config's ranking: ``auto`` chosen on the validation photos (:func:`choose_ranking`), a
    ``calibrated`` prototype source resolved on them, anything else as declared."""
    choice = _ranking(means, val, declared=declared, scale=scale, classifier=classifier)
    choice.reserve, choice.genus_insert = declared.reserve, declared.genus_insert
    choice.branch = declared.branch.model_dump() if declared.branch is not None else None
    return choice


def _ranking(means: ClassMeans, val: ValidationSet, *, declared: InferenceConfig, scale: float,
             classifier: Scorer | None) -> InferenceChoice:
    d = declared.model_dump()
    if declared.mode == "classifier":
        return InferenceChoice(mode="classifier", label="classifier", scale=scale, declared=d,
                               evidence={"rule": "the config's inference.mode"})
    if declared.mode == "auto":
        field = (val.domains == 1) & (val.labels >= 0)
        rows = val.subset(field)
        clf = (classifier(rows.embeddings, rows.logits, "field") if classifier is not None and len(rows.labels)
               else np.zeros((len(rows.labels), means.num_classes)))
        pick = choose_ranking(means, rows.embeddings, rows.labels, clf)
        if pick["mode"] == "classifier":
            return InferenceChoice(mode="classifier", label="classifier", scale=scale, declared=d,
                                   evidence=pick["evidence"])
        return InferenceChoice(mode="prototype", prototype_source=pick["prototype_source"],
                               field_weight=pick["field_weight"], shift=pick["shift"], scale=scale,
                               label=f"auto-prototype-{pick['prototype_source']}", declared=d,
                               evidence=pick["evidence"])
    source, fw, shift, evidence = declared.prototype_source, declared.field_weight, 1.0, {}
    if source == "calibrated":
        field = val.domains == 1
        evidence = calibrate_shift(means, val.embeddings[field], val.labels[field])
        source, fw, shift = "shifted", float(evidence["field_weight"]), float(evidence["shift"])  # type: ignore[arg-type]
        if not evidence.get("calibrated"):
            evidence["note"] = "fewer than two paired species have validation photos: the plain 'shifted' setting"
    evidence["rule"] = "the config's inference section"
    return InferenceChoice(mode="prototype", prototype_source=source, field_weight=fw, shift=shift, scale=scale,
                           label=f"prototype-{declared.prototype_source}", declared=d, evidence=evidence)


def calibrate_threshold(model: RunModel, val: ValidationSet, *, target: float = DEFAULT_TARGET) -> dict[str, Any]:
    """The "no confident match" threshold on the validation field photos (held-out sheets when a run has
    none), for the confidence the model gives under its inference choice."""
    known = val.labels >= 0
    field = val.domains == 1
    domain = "field" if (known & field).any() else "herbarium"
    rows = val.subset(known & (field if domain == "field" else ~field))
    readable = ~np.isnan(rows.embeddings).any(axis=1)
    unreadable = rows.paths[~readable].tolist()
    rows = rows.subset(readable)
    if len(rows.labels):
        scores = model.scorer(rows.embeddings, rows.logits, domain)
        log_probs = log_probabilities(scores, model.scorer.kind)
        conf, pred = np.exp(log_probs.max(axis=1)), log_probs.argmax(axis=1)
        combination = compare_combinations(log_probs, rows.labels)
    else:
        conf, pred, combination = np.zeros(0), np.zeros(0, int), {}
    result = choose_threshold(conf, pred == rows.labels, target=target)
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **result,
        "genus": _genus_threshold(model, log_probs if len(rows.labels) else None, rows.labels, target),
        "confidence": model.confidence,
        "rule": f"lowest threshold whose kept validation photos are >= {target:.0%} right at rank 1 "
        f"(at least {MIN_ACCEPTED} kept)",
        "validation": {"domain": domain, "photos": int(len(rows.labels)),
                       "species": int(len(np.unique(rows.labels))), "unreadable": unreadable},
        "combination": combination,
    }



def is_current(run: Path, card: ModelCard) -> bool:
    """Whether the run holds every artefact inference needs (written by this version's training/fitting)."""
    paths = RunPaths(run)
    return bool(card.fingerprint) and all(p.is_file() for p in (paths.split, paths.prototypes, paths.validation,
                                                                   paths.inference, paths.calibration))


def upgrade(run: Path, card: ModelCard, ds: Dataset, **kw: Any) -> bool:
    """Bring a run written by an older h2f up to date from the dataset it was trained on: fingerprint the
    weights, record the validation split (with the parameters the run was made with) and write what
    inference needs. Returns whether anything was done."""
    if is_current(run, card):
        return False
    paths = RunPaths(run)
    if card.kind == "network":
        cfg = load_config(paths.config)
        d = cfg.data
        params = {"field_fraction": d.val_field_fraction, "herbarium_fraction": d.val_herbarium_fraction,
                  "seed": cfg.seed if d.val_seed is None else d.val_seed}
        declared, scale = cfg.inference, cfg.model.arcface.scale
    else:
        m = card.model
        params = {"field_fraction": float(m.get("val_field_fraction") or 0.0),
                  "herbarium_fraction": float(m.get("val_herbarium_fraction") or 0.0), "seed": int(m.get("seed", 0))}
        declared, scale = InferenceConfig(), 15.0
    card = stamp_card(run, card, weights_file(run, card))
    split, _, _ = make_split(ds.split("train"), **params)
    finalize(run, ds, split, declared=declared, scale=scale, **kw)
    return True


def _genus_threshold(model: RunModel, log_probs: np.ndarray | None, labels: np.ndarray, target: float
                     ) -> dict[str, Any]:
    """The same rule for the genus answer: confidence = the top genus's summed probability."""
    tax = model.card.taxonomy()
    if log_probs is None:
        return {**choose_threshold(np.zeros(0), np.zeros(0, bool), target=target), "genera": tax.num_genera}
    gp = tax.genus_probabilities(np.exp(log_probs))
    ok = gp.argmax(axis=1) == tax.genus_labels(labels)
    return {**choose_threshold(gp.max(axis=1), ok, target=target), "genera": tax.num_genera}
