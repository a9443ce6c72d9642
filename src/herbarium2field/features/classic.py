"""Frozen-feature baselines as run directories (``h2f fit-classic``): fit a classical classifier on an
embedding cache and write a run that every later command loads like a trained network's — the yardstick
fine-tuned networks must beat, and a first-class recipe where it wins on real photos.

A classic run directory holds ``model_card.json`` (kind ``classic``: classes, groups, the backbone's
preprocessing and ``model = {classifier, options, align, backbone, weights, features_spec, ...}``),
``model.joblib`` (the fitted alignment + scikit-learn estimator), ``environment.json``, and what inference
needs (:mod:`herbarium2field.run.finalize`: split, class means, validation outputs, inference choice,
calibration), all made from the cached features without embedding anything again.

Scores have one column per class of ``card.class_ids`` (all species of the dataset, in class order);
species absent from the training data get ``-inf``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from herbarium2field.config import InferenceConfig
from herbarium2field.data.datasets import DOMAIN_CODES
from herbarium2field.data.manifest import labels_of
from herbarium2field.data.taxonomy_file import dataset_families
from herbarium2field.errors import H2FError
from herbarium2field.features.store import Features, load_features
from herbarium2field.io import atomic_path, write_json
from herbarium2field.models.align import fit_alignment
from herbarium2field.models.classic_head import ABSENT, ClassicHead
from herbarium2field.models.classifiers import make_classifier, resolve_options
from herbarium2field.run.artefacts import Split, ValidationSet
from herbarium2field.run.card import ModelCard, environment, package_version, read_card
from herbarium2field.run.finalize import compute_branch, make_split, stamp_card, write_inference_artefacts
from herbarium2field.run.load import load_classic_head, load_model
from herbarium2field.run.paths import RunPaths
from herbarium2field.scoring.metrics import evaluate, group_masks
from herbarium2field.scoring.prototypes import ClassMeans

__all__ = ["ABSENT", "ClassicModel", "fit_classic", "load_classic", "save_classic"]

DOMAIN_CHOICES = ("both", "herbarium", "field")
_FORMAT = 1


@dataclass
class ClassicModel:
    """A fitted frozen-feature classifier with its model card (and, until saved, the rows it was fitted on)."""

    card: ModelCard
    head: ClassicHead
    features: Features | None = field(default=None, repr=False)
    train_rows: np.ndarray | None = field(default=None, repr=False)  # cache rows the classifier saw
    split: Split | None = None

    @property
    def trained_class_ids(self) -> list[str]:
        return [str(c) for c in self.head.estimator.classes_]

    def scores(self, features: np.ndarray, domain: str | np.ndarray = "field") -> np.ndarray:
        """Scores ``[N, C]`` in ``card.class_ids`` order for embeddings ``[N, D]`` (from the same backbone)."""
        return self.head.scores(features, domain)


# ---- fitting -----------------------------------------------------------------------------------------


def training_mask(features: Features, domains: str = "both", train_mask: np.ndarray | None = None) -> np.ndarray:
    """Training rows of the cache that are usable (decoded, labelled), optionally of one domain only."""
    if domains not in DOMAIN_CHOICES:
        raise H2FError(f"unknown --domains {domains!r}", hint=f"use one of {', '.join(DOMAIN_CHOICES)}")
    t = features.table
    m = features.mask(split="train") & t.ok.to_numpy() & t.class_id.notna().to_numpy()
    if train_mask is not None:
        m &= np.asarray(train_mask, dtype=bool)
    if domains != "both":
        m &= (t.domain == domains).to_numpy()
    return m


def fit_classic(
    features: Features | str | Path,
    classifier: str = "logreg",
    options: dict[str, Any] | None = None,
    *,
    align: str = "none",
    align_reg: float = 1.0,
    domains: str = "both",
    train_mask: np.ndarray | None = None,
    val_field_fraction: float = 0.0,
    seed: int = 0,
    name: str = "classic",
) -> ClassicModel:
    """Fit ``classifier`` on the training rows of an embedding cache (herbarium sheets + field photos).

    ``train_mask`` (bool per cache row) removes training rows, e.g. the field photos of some species to
    study species without pairs; the card's ``with_pairs`` are the species that keep field photos.
    ``domains`` restricts what the classifier is fitted on, without changing the species groups.
    ``val_field_fraction`` holds out that share of each species' training field photos with the same split
    ``h2f train`` makes (:func:`~herbarium2field.run.finalize.make_split`) and records top-1/top-5 on them in
    ``card.validation``; no validation by default.
    """
    feats = features if isinstance(features, Features) else load_features(features)
    opts = resolve_options(classifier, options)
    t = feats.table
    if val_field_fraction and not 0 < val_field_fraction < 1:
        raise H2FError(f"--val-field-fraction must be between 0 and 1, got {val_field_fraction}")
    listed = feats.mask(split="train") & t.class_id.notna().to_numpy()
    if train_mask is not None:
        listed &= np.asarray(train_mask, dtype=bool)
    split, _, _ = make_split(t[listed].reset_index(drop=True), field_fraction=val_field_fraction, seed=seed)
    val = t.path.isin(set(split.val_paths)).to_numpy() & listed
    avail = training_mask(feats, "both", train_mask) & ~val
    m = training_mask(feats, domains, train_mask) & ~val
    x, y = feats.embeddings[m], t.class_id[m].astype(str).to_numpy()
    dom = t.domain[m].astype(str).to_numpy()
    alignment = fit_alignment(x, dom, align, align_reg)
    clf = make_classifier(classifier, opts).fit(alignment.transform(x, dom), y)
    spec = feats.meta["spec"]
    with_pairs = sorted(set(t.class_id[avail & (t.domain == "field").to_numpy()].astype(str)))
    card = ModelCard(
        name=name,
        kind="classic",
        class_ids=feats.class_ids,
        species=list(feats.classes.values()),
        with_pairs=with_pairs,
        preprocessing=dict(spec["preprocessing"]),
        model={
            "classifier": classifier,
            "options": opts,
            "align": align,
            "align_reg": align_reg,
            "domains": domains,
            "backbone": spec["backbone"],
            "weights": spec["weights"],
            "weights_sha256": spec["weights_sha256"],
            "features": str(Path(feats.path).resolve()),
            "features_spec": spec,
            "classes_trained": len(clf.classes_),
            "val_field_fraction": val_field_fraction,
            "seed": seed,
            **clf.info_,
        },
        dataset={
            "root": spec["dataset_root"],
            "train_images": int(m.sum()),
            "train_herbarium": int((dom == "herbarium").sum()),
            "train_field": int((dom == "field").sum()),
            "val_images": int(val.sum()),
            "test_images": int(feats.mask(split="test").sum()),
            "removed_by_train_mask": int((training_mask(feats) & ~avail & ~val).sum()),
        },
        embedding_dim=feats.dim,
        extra={"sklearn": package_version("scikit-learn")},
        families=dataset_families(spec["dataset_root"]) if spec.get("dataset_root") else {},
    )
    model = ClassicModel(card, ClassicHead(clf, alignment, card.class_ids), feats, np.flatnonzero(avail), split)
    if val.any():
        card.validation = _validate(model, feats, val)
    return model


def _validate(model: ClassicModel, feats: Features, val: np.ndarray) -> dict[str, Any]:
    y = labels_of(feats.table[val], {c: i for i, c in enumerate(model.card.class_ids)})
    ok = feats.table.ok.to_numpy()[val]
    scores = model.scores(feats.embeddings[val], feats.table.domain[val].astype(str).to_numpy())
    scores[~ok] = 0.0  # an unreadable photo: every species equal, ranked last
    groups = group_masks(y, model.card.class_ids, set(model.card.with_pairs))
    res = evaluate(scores, y, groups, ks=(1, 5), n_boot=0)["groups"]
    out: dict[str, Any] = {"split": "validation (held-out training field photos)", "n": res["overall"]["n"]}
    for g, r in res.items():
        prefix = "" if g == "overall" else f"{g}_"
        out.update({f"val_{prefix}top1": r["top1"], f"val_{prefix}top5": r["top5"]})
    return out


# ---- saving and loading ------------------------------------------------------------------------------


def save_classic(model: ClassicModel, run_dir: str | Path, *, force: bool = False,
                 inference: InferenceConfig | None = None, num_workers: int = 2) -> RunPaths:
    """Write the run directory: the fitted model, card and environment, and what inference needs (class means
    and validation outputs from the cached features, the inference choice, the confidence threshold)."""
    paths = RunPaths(Path(run_dir))
    if paths.card.is_file() and not force:
        raise H2FError("this run directory already holds a model", path=paths.root,
                       hint="choose another --out, or pass --force to replace it")
    if not force and paths.root.exists() and not paths.card.is_file() and any(paths.root.iterdir()):
        raise H2FError("output folder exists and is not a run directory; refusing to write into it",
                       path=paths.root, hint="choose a new or empty folder")
    if model.features is None or model.train_rows is None or model.split is None:
        raise H2FError("this classic model was loaded, not fitted: there is nothing new to save")
    paths.root.mkdir(parents=True, exist_ok=True)
    for stale in (paths.split, paths.prototypes, paths.validation, paths.inference, paths.calibration):
        stale.unlink(missing_ok=True)
    model.card.name = paths.root.name
    with atomic_path(paths.classifier) as tmp:
        joblib.dump({"format": _FORMAT, "classifier": model.head.estimator, "alignment": model.head.alignment}, tmp)
    write_json(paths.environment, environment())
    card = stamp_card(paths.root, model.card, paths.classifier)
    feats, t = model.features, model.features.table
    index = {c: i for i, c in enumerate(card.class_ids)}
    rows = model.train_rows
    domains = np.array([DOMAIN_CODES[str(d)] for d in t.domain], dtype=np.int64)
    labels = labels_of(t, index)
    means = ClassMeans.from_embeddings(feats.embeddings[rows], labels[rows], domains[rows], card.num_classes)
    val = t.path.isin(set(model.split.val_paths)).to_numpy()
    emb = feats.embeddings[val].copy()
    emb[~t.ok.to_numpy()[val]] = np.nan
    vset = ValidationSet(t.path[val].astype(str).to_numpy(), labels[val], domains[val], emb, None)
    run_model = load_model(paths.root, "torch", card=card, require_choice=False)
    declared = inference or InferenceConfig()
    if declared.branch is not None:
        sheets = t.iloc[rows]
        sheets = sheets[sheets.domain == "herbarium"]
        compute_branch(run_model, Path(feats.spec.dataset_root), sheets, declared.branch.model_dump(),
                       num_workers=num_workers).save(paths.root, card)
    write_inference_artefacts(run_model, model.split, means, vset, declared=declared)
    return paths


def load_classic(run_dir: str | Path) -> ClassicModel:
    """Load a run written by ``h2f fit-classic``; H2FError when it is not one or is damaged."""
    run = Path(run_dir)
    card = read_card(run)
    if card.kind != "classic":
        raise H2FError(f"this run holds a {card.kind} model, not a classic one", path=run,
                       hint="load any run with herbarium2field.run.load.load_model")
    return ClassicModel(card, load_classic_head(run, card))
