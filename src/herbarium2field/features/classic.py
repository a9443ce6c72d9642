"""Frozen-feature baselines as run directories: fit a classical classifier on an embedding cache, save it,
load it back, and score photos with it — the yardstick fine-tuned networks must beat.

A classic run directory (``h2f fit-classic``)::

    runs/<name>/model_card.json    kind "classic": classes, groups, the backbone's preprocessing, and
                                   model = {classifier, options, align, backbone, weights, weights_sha256,
                                   features (the cache folder), ...}
    runs/<name>/model.joblib       the fitted alignment + classifier (scikit-learn objects)
    runs/<name>/environment.json   package versions, command line

Scores have one column per class of ``card.class_ids`` (all species of the dataset, in class order);
species absent from the training data get ``-inf``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from herbarium2field.data.manifest import labels_of
from herbarium2field.errors import H2FError
from herbarium2field.features.store import CacheSpec, Features, load_features
from herbarium2field.io import atomic_path, write_json
from herbarium2field.models.align import Alignment, fit_alignment
from herbarium2field.models.classifiers import FrozenFeatureClassifier, make_classifier, resolve_options
from herbarium2field.training.run_dir import ModelCard, RunPaths, package_version

#: Score of a species the classifier never saw (below every real score).
ABSENT = float("-inf")
MODEL_FILE = "model.joblib"
DOMAIN_CHOICES = ("both", "herbarium", "field")
_FORMAT = 1


@dataclass
class ClassicModel:
    """A fitted frozen-feature classifier with its model card."""

    card: ModelCard
    classifier: FrozenFeatureClassifier
    alignment: Alignment

    @property
    def trained_class_ids(self) -> list[str]:
        return [str(c) for c in self.classifier.classes_]

    def scores(self, features: np.ndarray, domain: str | np.ndarray = "field") -> np.ndarray:
        """Scores ``[N, C]`` in ``card.class_ids`` order for embeddings ``[N, D]`` (from the same backbone).

        ``domain`` says what the rows are (new photos: ``"field"``); it matters only for ``standardize``.
        """
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.card.embedding_dim:
            raise H2FError(
                f"features must have shape [N, {self.card.embedding_dim}] (this model's embedding size), "
                f"got {tuple(x.shape)}",
                hint="embed images with model.backbone() / model.embed()",
            )
        out = np.full((len(x), len(self.card.class_ids)), ABSENT, dtype=np.float64)
        if len(x):
            index = {c: i for i, c in enumerate(self.card.class_ids)}
            cols = [index[c] for c in self.trained_class_ids]
            out[:, cols] = self.classifier.predict_proba(self.alignment.transform(x, domain))
        return out

    def backbone(self):  # type: ignore[no-untyped-def]  # -> tuple[nn.Module, Preprocessing]
        """The frozen network and preprocessing the features were made with (weights sha256 checked).

        A timm model, or an H2FNet for caches made from an ``h2f train`` run; give it to
        :func:`herbarium2field.models.predict.embed_images` (which L2-normalises, like the cache).
        """
        from herbarium2field.features.extract import extractor_from_spec

        ex = extractor_from_spec(self.card.model["features_spec"])
        return ex.net, ex.pre

    def embed(self, images: list) -> np.ndarray:  # type: ignore[type-arg]
        """Embeddings of PIL images, made exactly as the cache's (for :meth:`scores`)."""
        from herbarium2field.models.predict import embed_images

        if not hasattr(self, "_net"):
            self._net, self._pre = self.backbone()
        emb, _ = embed_images(self._net, images, self._pre)
        return emb


# ---- fitting -----------------------------------------------------------------------------------------


def training_mask(
    features: Features, domains: str = "both", train_mask: np.ndarray | None = None
) -> np.ndarray:
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
    ``val_field_fraction`` holds out that share of each species' training field photos (seeded, as
    ``h2f train`` does) and records top-1/top-5 on them in ``card.validation``; no validation by default.
    """
    feats = features if isinstance(features, Features) else load_features(features)
    opts = resolve_options(classifier, options)
    t = feats.table
    val = np.zeros(len(t), dtype=bool)
    if val_field_fraction:
        if not 0 < val_field_fraction < 1:
            raise H2FError(f"--val-field-fraction must be between 0 and 1, got {val_field_fraction}")
        from herbarium2field.data.split import validation_mask

        usable = training_mask(feats, "both", train_mask)
        val[np.flatnonzero(usable)] = validation_mask(
            t[usable].reset_index(drop=True), field_fraction=val_field_fraction, seed=seed
        )
        train_mask = ~val if train_mask is None else (np.asarray(train_mask, dtype=bool) & ~val)
    avail = training_mask(feats, "both", train_mask)
    m = training_mask(feats, domains, train_mask)
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
            # the held-out photos, so evaluation (--split val) and calibration can find them again
            "val_field_fraction": val_field_fraction,
            "seed": seed,
            **clf.info_,
        },
        dataset={
            "root": spec["dataset_root"],
            "train_images": int(m.sum()),
            "train_herbarium": int((dom == "herbarium").sum()),
            "train_field": int((dom == "field").sum()),
            "test_images": int(feats.mask(split="test").sum()),
            "removed_by_train_mask": int((training_mask(feats) & ~avail).sum()),
        },
        embedding_dim=feats.dim,
        checkpoint=MODEL_FILE,
        extra={"sklearn": package_version("scikit-learn")},
    )
    model = ClassicModel(card, clf, alignment)
    if val.any():
        card.validation = _validate(model, feats, val)
    return model


def _validate(model: ClassicModel, feats: Features, val: np.ndarray) -> dict[str, Any]:
    from herbarium2field.evaluation.metrics import evaluate, group_masks

    y = labels_of(feats.table[val], {c: i for i, c in enumerate(model.card.class_ids)})
    scores = model.scores(feats.embeddings[val], feats.table.domain[val].astype(str).to_numpy())
    groups = group_masks(y, model.card.class_ids, set(model.card.with_pairs))
    res = evaluate(scores, y, groups, ks=(1, 5), n_boot=0)["groups"]
    out: dict[str, Any] = {"split": "validation (held-out training field photos)", "n": res["overall"]["n"]}
    for g, r in res.items():
        prefix = "" if g == "overall" else f"{g}_"
        out.update({f"val_{prefix}top1": r["top1"], f"val_{prefix}top5": r["top5"]})
    return out


# ---- saving and loading ------------------------------------------------------------------------------


def save_classic(model: ClassicModel, run_dir: str | Path, *, force: bool = False) -> RunPaths:
    """Write the run directory (model.joblib, model_card.json, environment.json)."""
    import joblib

    from herbarium2field.training.run_dir import environment

    paths = RunPaths(Path(run_dir))
    if paths.card.is_file() and not force:
        raise H2FError(
            "this run directory already holds a model",
            path=paths.root,
            hint="choose another --out, or pass --force to replace it",
        )
    if paths.root.exists() and not paths.card.is_file() and any(paths.root.iterdir()):
        raise H2FError(
            "output folder exists and is not a run directory; refusing to write into it",
            path=paths.root,
            hint="choose a new or empty folder",
        )
    paths.root.mkdir(parents=True, exist_ok=True)
    model.card.name = paths.root.name
    with atomic_path(paths.root / MODEL_FILE) as tmp:
        joblib.dump({"format": _FORMAT, "classifier": model.classifier, "alignment": model.alignment}, tmp)
    write_json(paths.environment, environment())
    model.card.save(paths.card)
    return paths


def load_classic(run_dir: str | Path) -> ClassicModel:
    """Load a run written by ``h2f fit-classic``; H2FError when it is not one or is damaged."""
    import joblib

    paths = RunPaths(Path(run_dir))
    card = ModelCard.load(paths.card)
    if card.kind != "classic":
        raise H2FError(
            f"this run holds a {card.kind} model, not a classic one",
            path=paths.root,
            hint="load networks with herbarium2field.training.run_dir.load_network",
        )
    f = paths.root / (card.checkpoint or MODEL_FILE)
    if not f.is_file():
        raise H2FError(
            f"{f.name} is missing from this run", path=paths.root, hint="refit with `h2f fit-classic`"
        )
    try:
        blob = joblib.load(f)
        clf, alignment = blob["classifier"], blob["alignment"]
    except Exception as exc:  # noqa: BLE001 - unpickling can fail in many ways
        raise H2FError(
            f"cannot read the fitted model ({type(exc).__name__}: {exc})",
            path=f,
            hint="refit with `h2f fit-classic` (files from another scikit-learn version may not load)",
        ) from None
    missing = set(map(str, clf.classes_)) - set(card.class_ids)
    if missing:
        raise H2FError(
            f"model and card disagree: classes {sorted(missing)[:5]} are not in the card", path=paths.card
        )
    return ClassicModel(card, clf, alignment)


def run_features(model: ClassicModel) -> Features:
    """The embedding cache a classic model was fitted on, checked to be the same cache (not rebuilt since)."""
    path = Path(model.card.model["features"])
    feats = load_features(path)
    diffs = CacheSpec(**model.card.model["features_spec"]).differences(feats.spec)
    if diffs:
        raise H2FError(
            "the feature cache changed since this model was fitted: " + "; ".join(diffs),
            path=path,
            hint=f"refit the model (`h2f fit-classic {path} ...`)",
        )
    return feats


def classic_split_scores(
    run_dir: str | Path, split: str = "test", data_root: str | Path | None = None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``(rows of the split in cache order, scores [N, C], embeddings [N, D])`` from the run's cache.

    Nothing is re-embedded. With ``data_root`` the dataset is re-read and must list the same images; its
    labels (class_id, species, has_pairs) replace the cache's. Rows whose image could not be decoded
    (``ok == False``) get equal scores for every trained species (ranked last by a pessimistic metric).
    """
    model = load_classic(run_dir)
    feats = run_features(model)
    if split not in ("train", "test"):
        raise H2FError(f"unknown split {split!r}", hint="use train or test")
    table, x = feats.select(split=split)
    if data_root is not None:
        table = _relabel(table, data_root, split)
    scores = model.scores(x, table.domain.astype(str).to_numpy())
    bad = ~table.ok.to_numpy()
    if bad.any():
        scores[bad] = np.where(np.isfinite(scores[bad]), 0.0, ABSENT)
    return table, scores, x


def _relabel(table: pd.DataFrame, data_root: str | Path, split: str) -> pd.DataFrame:
    from herbarium2field.data.manifest import read_dataset

    ds = read_dataset(data_root, check="none", allow_missing=True)
    other = ds.split(split).set_index("path")
    ours = table.path.astype(str)
    missing = sorted(set(ours) - set(other.index.astype(str)))
    extra = sorted(set(other.index.astype(str)) - set(ours))
    if missing or extra:
        raise H2FError(
            f"the dataset's {split} images differ from the feature cache's "
            f"({len(missing)} only in the cache, {len(extra)} only in the dataset, e.g. "
            f"{(missing + extra)[0]})",
            path=data_root,
            hint="re-embed this dataset (`h2f embed ... --force`) and refit",
        )
    out = table.copy()
    for col in ("class_id", "species", "has_pairs"):
        out[col] = other.loc[ours, col].to_numpy()
    return out
