"""Identification metrics over a score matrix, reported overall and per pairs group, with bootstrap CIs.

Inputs are plain arrays so every model mode (softmax logits, ArcFace cosines, prototype similarities,
probabilities) is scored the same way: ``scores [N, C]`` (higher = more likely, column ``j`` = class
index ``j``) and ``labels [N]`` (class index, or ``-1`` for a test image whose species is not among the
model's classes).

**Tie rule (pessimistic).** The rank of the true class is ``1 + #(classes scoring higher) + #(other
classes scoring equal)``: a tie is always broken against the true class, so a constant (or saturated,
e.g. all probabilities rounded to 0) scorer can never look good. ``-inf`` scores are allowed (masked
classes); NaN scores are an error because they have no order.

**Unknown labels.** A ``-1`` label gets rank ``C + 1`` (below every class): it is wrong at every k, even
``k > C``, and contributes 0 to the mean reciprocal rank. Per-class tables and the macro accuracy leave it
out (it has no class), but it counts in every image-level number.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from herbarium2field.errors import H2FError

GROUPS = ("with_pairs", "without_pairs")  # keys of group_masks(); "overall" is always reported as well
GROUP_LABELS = {"overall": "overall", "with_pairs": "with pairs", "without_pairs": "without pairs"}
_BOOT_CELLS = 2_000_000  # bootstrap resamples are drawn in chunks of at most this many indices (memory cap)


class ScoreError(H2FError, ValueError):
    """Scores / labels / masks that cannot be evaluated (wrong shape, NaN, out-of-range label)."""


# ----------------------------------------------------------------------------------------------- validation


def _check(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 2:
        raise ScoreError(f"scores must be a 2-D array [N images, C classes], got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ScoreError(f"scores must be real numbers, got dtype {s.dtype}")
    if y.ndim != 1 or y.shape[0] != s.shape[0]:
        raise ScoreError(
            f"labels must be 1-D with one entry per score row ({s.shape[0]}), got shape {y.shape}"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ScoreError(f"labels must be integer class indices (or -1 for unknown), got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    n_cls = s.shape[1]
    if n_cls == 0 and s.shape[0]:
        raise ScoreError("scores have no class columns")
    bad = (y < -1) | (y >= n_cls)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ScoreError(
            f"label {int(y[i])} of image {i} is outside 0..{n_cls - 1} (use -1 for a species the "
            "model does not know)",
            hint="map class ids to column indices with the model's class list",
        )
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        rows = np.flatnonzero(np.isnan(s).any(axis=1))
        raise ScoreError(
            f"scores contain NaN in {rows.size} image(s), first at row {int(rows[0])}: NaN has no rank",
            hint="check the model output (a diverged run, or a division by a zero norm)",
        )
    return s, y


def _ranks(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    n, n_cls = s.shape
    out = np.full(n, n_cls + 1, dtype=np.int64)
    known = np.flatnonzero(y >= 0)
    chunk = max(1, _BOOT_CELLS // max(n_cls, 1))
    for start in range(0, known.size, chunk):
        idx = known[start : start + chunk]
        sub = s[idx]
        true = sub[np.arange(idx.size), y[idx]][:, None]
        # >= counts the true class itself once (score == itself): 1 + #greater + #(other equal) exactly.
        out[idx] = (sub >= true).sum(axis=1)
    return out


def ranks(scores: Any, labels: Any) -> np.ndarray:
    """Rank of the true class per image (1 = best), pessimistic on ties; ``C + 1`` for label ``-1``."""
    s, y = _check(scores, labels)
    return _ranks(s, y)


# ----------------------------------------------------------------------------------------- scalar metrics


def _topk(r: np.ndarray, n_cls: int, k: int) -> float:
    # Clamping k to C makes k > C mean "every in-class label is correct" while rank C + 1 (unknown) stays wrong.
    return float(np.mean(r <= min(k, n_cls)))


def _mrr(r: np.ndarray, n_cls: int) -> float:
    return float(np.mean(np.where(r <= n_cls, 1.0 / r, 0.0)))


def _macro(r: np.ndarray, y: np.ndarray, n_cls: int, k: int = 1) -> float | None:
    known = y >= 0
    if not known.any():
        return None
    hit = (r[known] <= min(k, n_cls)).astype(float)
    cnt = np.bincount(y[known], minlength=n_cls)
    acc = np.bincount(y[known], weights=hit, minlength=n_cls)
    present = cnt > 0
    return float(np.mean(acc[present] / cnt[present]))


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ScoreError(f"k must be a positive integer, got {k!r}")
    return int(k)


def topk_accuracy(scores: Any, labels: Any, k: int = 1) -> float | None:
    """Share of images whose true class is among the k best (``None`` for no images).

    ``k`` larger than the number of classes counts every in-class label as correct; ``-1`` is never correct.
    """
    k = _check_k(k)
    s, y = _check(scores, labels)
    return _topk(_ranks(s, y), s.shape[1], k) if y.size else None


def mean_reciprocal_rank(scores: Any, labels: Any) -> float | None:
    """Mean of 1 / rank (0 for a ``-1`` label): PlantCLEF 2020's primary metric (``None`` for no images)."""
    s, y = _check(scores, labels)
    return _mrr(_ranks(s, y), s.shape[1]) if y.size else None


def macro_accuracy(scores: Any, labels: Any, k: int = 1) -> float | None:
    """Mean over the classes present in ``labels`` of their top-k accuracy, so rare species weigh as much as
    common ones. ``-1`` labels are left out (no class); ``None`` when no class is present."""
    k = _check_k(k)
    s, y = _check(scores, labels)
    return _macro(_ranks(s, y), y, s.shape[1], k)


# ------------------------------------------------------------------------------------ grouped + bootstrap


def group_masks(
    labels: Any, class_ids: Sequence[str], with_pairs: Collection[str] | Any
) -> dict[str, np.ndarray]:
    """Boolean masks ``with_pairs`` / ``without_pairs`` over test images, by the group of their true class.

    ``with_pairs`` is the set of class ids that have field photos in training (or a bool array per class).
    Images labelled ``-1`` belong to neither group (they are in "overall" only).
    """
    y = np.asarray(labels, dtype=np.int64)
    wp = with_pairs_mask(class_ids, with_pairs)
    known = y >= 0
    in_wp = np.zeros(y.shape, dtype=bool)
    in_wp[known] = wp[y[known]]
    return {"with_pairs": known & in_wp, "without_pairs": known & ~in_wp}


def _metric_names(ks: Sequence[int]) -> list[str]:
    return [f"top{k}" for k in ks] + ["mrr", "macro_top1"]


def _point(r: np.ndarray, y: np.ndarray, n_cls: int, ks: Sequence[int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"top{k}": _topk(r, n_cls, k) for k in ks}
    out["mrr"] = _mrr(r, n_cls)
    out["macro_top1"] = _macro(r, y, n_cls, 1)
    return out


def _bootstrap(
    r: np.ndarray, y: np.ndarray, n_cls: int, ks: Sequence[int], n_boot: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Replicates of every metric from ``n_boot`` resamples of the images (with replacement), vectorised."""
    n = r.size
    reps: dict[str, list[np.ndarray]] = {m: [] for m in _metric_names(ks)}
    top1 = (r <= 1).astype(float)
    recip = np.where(r <= n_cls, 1.0 / r, 0.0)
    yk = np.where(y >= 0, y, n_cls)  # unknowns go to an extra bucket that the macro average ignores
    chunk = max(1, _BOOT_CELLS // n)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        rr = r[idx]
        for k in ks:
            reps[f"top{k}"].append(np.mean(rr <= min(k, n_cls), axis=1))
        reps["mrr"].append(recip[idx].mean(axis=1))
        flat = (np.arange(b)[:, None] * (n_cls + 1) + yk[idx]).ravel()
        cnt = np.bincount(flat, minlength=b * (n_cls + 1)).reshape(b, n_cls + 1)[:, :n_cls]
        hit = np.bincount(flat, weights=top1[idx].ravel(), minlength=b * (n_cls + 1)).reshape(b, n_cls + 1)[
            :, :n_cls
        ]
        present = cnt > 0
        n_present = present.sum(axis=1)
        per_cls = np.divide(hit, cnt, out=np.zeros_like(hit), where=present)
        macro = np.divide(per_cls.sum(axis=1), n_present, out=np.full(b, np.nan), where=n_present > 0)
        reps["macro_top1"].append(macro)
        done += b
    return {m: np.concatenate(v) for m, v in reps.items()}


def _group_seed(seed: int, name: str) -> np.random.Generator:
    # A group's CI depends only on (seed, group name, its images): adding or reordering groups changes nothing.
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def evaluate(
    scores: Any,
    labels: Any,
    groups: Mapping[str, Any] | None = None,
    ks: Iterable[int] = (1, 5),
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Every number overall and per group, each with a seeded percentile-bootstrap confidence interval.

    ``groups`` maps a name (e.g. from :func:`group_masks`) to a bool mask over images. Returns::

        {"ks": [1, 5], "n_classes": C, "tie_rule": "pessimistic",
         "bootstrap": {"n_boot": 1000, "seed": 0, "ci": 0.95, "method": "percentile"},
         "groups": {"overall": {"n": 207, "n_unknown": 0, "n_classes_present": 100,
                                "top1": 0.52, "top5": 0.71, "mrr": 0.60, "macro_top1": 0.49,
                                "ci": {"top1": [0.45, 0.59], ...}}, "with_pairs": {...}, ...}}

    Images are resampled within each group, so a group's interval reflects its own (often small) size. An
    empty group gives ``n = 0`` and ``None`` for every value; a CI is ``None`` when ``n_boot`` is 0. Plain
    Python types only, so the result goes straight to JSON.
    """
    s, y = _check(scores, labels)
    return evaluate_ranks(_ranks(s, y), y, s.shape[1], groups, ks=ks, n_boot=n_boot, seed=seed, ci=ci)


def evaluate_ranks(
    r: Any,
    labels: Any,
    n_classes: int,
    groups: Mapping[str, Any] | None = None,
    ks: Iterable[int] = (1, 5),
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """:func:`evaluate` from the rank of each image's true class (1 = first; ``n_classes + 1`` = not
    ranked / unknown label), e.g. pooled over several models scored on disjoint images (leave-species-out)."""
    r = np.asarray(r, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    if r.shape != y.shape or r.ndim != 1:
        raise ScoreError(f"ranks and labels must be equal-length 1-D arrays, got {r.shape} and {y.shape}")
    n_cls = int(n_classes)
    ks = [_check_k(k) for k in ks]
    if not ks:
        raise ScoreError("ks must name at least one k (e.g. ks=(1, 5))")
    ks = sorted(set(ks))
    if not 0 < ci < 1:
        raise ScoreError(f"ci must be between 0 and 1 (e.g. 0.95), got {ci}")
    if n_boot < 0:
        raise ScoreError(f"n_boot must be >= 0, got {n_boot}")
    n = len(r)
    masks: dict[str, np.ndarray] = {"overall": np.ones(n, dtype=bool)}
    for name, m in (groups or {}).items():
        if name == "overall":
            raise ScoreError("group name 'overall' is reserved (it is always reported)")
        mm = np.asarray(m)
        if mm.shape != (n,) or mm.dtype != bool:
            raise ScoreError(
                f"group {name!r} must be a bool mask with one entry per image ({n}), got "
                f"shape {mm.shape}, dtype {mm.dtype}"
            )
        masks[str(name)] = mm
    alpha = (1.0 - ci) / 2.0
    names = _metric_names(ks)
    out_groups: dict[str, Any] = {}
    for name, m in masks.items():
        rg, yg = r[m], y[m]
        g: dict[str, Any] = {
            "n": int(m.sum()),
            "n_unknown": int((yg < 0).sum()),
            "n_classes_present": int(np.unique(yg[yg >= 0]).size),
        }
        if rg.size == 0:
            g.update({k: None for k in names})
            g["ci"] = {k: None for k in names}
        else:
            g.update(_point(rg, yg, n_cls, ks))
            cis: dict[str, list[float] | None] = {k: None for k in names}
            if n_boot > 0:
                reps = _bootstrap(rg, yg, n_cls, ks, n_boot, _group_seed(seed, name))
                for k, v in reps.items():
                    v = v[~np.isnan(v)]
                    if v.size and g[k] is not None:
                        lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
                        cis[k] = [float(lo), float(hi)]
            g["ci"] = cis
        out_groups[name] = g
    return {
        "ks": ks,
        "n_classes": int(n_cls),
        "tie_rule": "pessimistic",
        "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "ci": float(ci), "method": "percentile"},
        "groups": out_groups,
    }


# ------------------------------------------------------------------------------------------------- tables


def paired_diff(a: Any, b: Any, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean of ``b - a`` over the same items (e.g. 0/1 hits of two models on one test set) with a paired
    percentile-bootstrap 95 % CI: pairing removes the between-image variance that two separate CIs carry."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise H2FError(f"paired_diff needs two equal-length 1-D arrays, got {a.shape} and {b.shape}")
    if a.size == 0:
        return {"diff": None, "ci": None, "n": 0}
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    d = (b[idx] - a[idx]).mean(1)
    lo, hi = np.quantile(d, [0.025, 0.975])
    return {"diff": round(float((b - a).mean()), 4), "ci": [round(float(lo), 4), round(float(hi), 4)], "n": int(a.size)}


def species_names(class_ids: Sequence[str], species: Mapping[str, str] | Sequence[str]) -> list[str]:
    """One name per class id, from a ``{class_id: name}`` mapping or a list in class order."""
    ids = [str(c) for c in class_ids]
    if isinstance(species, Mapping):
        return [str(species.get(c, c)) for c in ids]
    names = [str(x) for x in species]
    if len(names) != len(ids):
        raise ScoreError(
            f"species has {len(names)} names for {len(ids)} class ids; pass one name per class "
            "(in score-column order) or a {class_id: name} mapping"
        )
    return names


def with_pairs_mask(class_ids: Sequence[str], with_pairs: Collection[str] | Any) -> np.ndarray:
    """Bool per class: has field photos in training. ``with_pairs`` is a set of class ids or a bool array."""
    ids = [str(c) for c in class_ids]
    arr = np.asarray(with_pairs) if not isinstance(with_pairs, set | frozenset | Mapping) else None
    if arr is not None and arr.dtype == bool:
        if arr.shape != (len(ids),):
            raise ScoreError(
                f"with_pairs as a bool array needs one entry per class ({len(ids)}), got {arr.shape}"
            )
        return arr
    wp = {str(c) for c in with_pairs}
    return np.array([c in wp for c in ids], dtype=bool)


def _check_classes(s: np.ndarray, class_ids: Sequence[str]) -> list[str]:
    ids = [str(c) for c in class_ids]
    if len(ids) != s.shape[1]:
        raise ScoreError(
            f"{len(ids)} class ids for {s.shape[1]} score columns; pass the model's class list "
            "in column order"
        )
    return ids


def _best_other(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Best-scoring class other than the true one (lowest index on ties): the 'wrong prediction' of a miss.

    With the pessimistic tie rule, a missed image always has some other class scoring >= the true class, so
    this is the class that beat it.
    """
    masked = s.astype(float, copy=True)
    known = np.flatnonzero(y >= 0)
    masked[known, y[known]] = -np.inf
    return np.argmax(masked, axis=1)


def confusion_counts(labels: Any, preds: Any, n_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted; ``-1`` labels are left out."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    if y.shape != p.shape or y.ndim != 1:
        raise H2FError(f"labels and preds must be 1-D of the same length, got {y.shape} and {p.shape}")
    keep = y >= 0
    if np.any(y >= n_classes) or np.any((p[keep] < 0) | (p[keep] >= n_classes)):
        raise H2FError(f"labels / predictions must be class indices 0..{n_classes - 1} (labels may be -1)")
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (y[keep], p[keep]), 1)
    return m


def per_class(
    scores: Any,
    labels: Any,
    class_ids: Sequence[str],
    species: Mapping[str, str] | Sequence[str],
    with_pairs: Collection[str] | Any,
) -> pd.DataFrame:
    """One row per class (in column order): how its test images fare and what they are mistaken for.

    Columns: ``class_id, species, group, n_test, top1, top5, mean_rank, most_wrong_class_id,
    most_wrong_species, most_wrong_count``. A class without test images has ``n_test = 0`` and NaN metrics;
    the most frequent wrong top-1 prediction breaks count ties by the lower class index.
    """
    s, y = _check(scores, labels)
    ids = _check_classes(s, class_ids)
    names = species_names(ids, species)
    wp = with_pairs_mask(ids, with_pairs)
    n_cls = s.shape[1]
    r = _ranks(s, y)
    known = y >= 0
    yk, rk = y[known], r[known]
    cnt = np.bincount(yk, minlength=n_cls)
    with np.errstate(invalid="ignore", divide="ignore"):
        top1 = np.bincount(yk, weights=(rk <= 1).astype(float), minlength=n_cls) / cnt
        top5 = np.bincount(yk, weights=(rk <= min(5, n_cls)).astype(float), minlength=n_cls) / cnt
        mean_rank = np.bincount(yk, weights=rk.astype(float), minlength=n_cls) / cnt
    wrong = known & (r > 1)
    pred = _best_other(s, y)
    conf = confusion_counts(y[wrong], pred[wrong], n_cls)
    most = conf.argmax(axis=1)
    most_n = conf.max(axis=1) if n_cls else np.zeros(0, dtype=np.int64)
    has = most_n > 0
    return pd.DataFrame(
        {
            "class_id": ids,
            "species": names,
            "group": np.where(wp, GROUP_LABELS["with_pairs"], GROUP_LABELS["without_pairs"]),
            "n_test": cnt,
            "top1": top1,
            "top5": top5,
            "mean_rank": mean_rank,
            "most_wrong_class_id": [ids[j] if h else None for j, h in zip(most, has, strict=True)],
            "most_wrong_species": [names[j] if h else None for j, h in zip(most, has, strict=True)],
            "most_wrong_count": most_n,
        }
    )


def top_confusions(
    scores: Any,
    labels: Any,
    class_ids: Sequence[str],
    species: Mapping[str, str] | Sequence[str],
    n: int = 20,
) -> pd.DataFrame:
    """The ``n`` most frequent (true species -> wrong top-1 species) pairs, most frequent first.

    Columns: ``true_class_id, true_species, pred_class_id, pred_species, count``. Images labelled ``-1``
    are left out (their true species is not a class). Count ties are ordered by true, then predicted index.
    """
    s, y = _check(scores, labels)
    ids = _check_classes(s, class_ids)
    names = species_names(ids, species)
    r = _ranks(s, y)
    wrong = (y >= 0) & (r > 1)
    pred = _best_other(s, y)
    cols = ["true_class_id", "true_species", "pred_class_id", "pred_species", "count"]
    if not wrong.any():
        return pd.DataFrame({c: pd.Series(dtype=int if c == "count" else object) for c in cols})
    pairs = pd.DataFrame({"t": y[wrong], "p": pred[wrong]}).value_counts().rename("count").reset_index()
    pairs = pairs.sort_values(["count", "t", "p"], ascending=[False, True, True], kind="stable").head(n)
    return pd.DataFrame(
        {
            "true_class_id": [ids[i] for i in pairs.t],
            "true_species": [names[i] for i in pairs.t],
            "pred_class_id": [ids[i] for i in pairs.p],
            "pred_species": [names[i] for i in pairs.p],
            "count": pairs["count"].to_numpy(),
        }
    ).reset_index(drop=True)


def topk_order(scores: Any, labels: Any, k: int) -> np.ndarray:
    """Indices of the k best classes per image, ties ordered against the true class, then by lower index.

    This is the ordering the pessimistic rank implies: the true class appears within the first k exactly
    when its rank is <= k.
    """
    k = _check_k(k)
    s, y = _check(scores, labels)
    n, n_cls = s.shape
    k = min(k, n_cls)
    is_true = np.zeros(s.shape, dtype=np.int8)
    known = np.flatnonzero(y >= 0)
    is_true[known, y[known]] = 1
    col = np.broadcast_to(np.arange(n_cls), s.shape)
    # lexsort: last key is primary -> descending score, then true class last, then lower index.
    order = np.lexsort((col, is_true, -s.astype(float)), axis=1)
    return order[:, :k]


def predictions_table(
    scores: Any,
    labels: Any,
    image_paths: Sequence[str],
    class_ids: Sequence[str],
    species: Mapping[str, str] | Sequence[str],
    k: int = 5,
) -> pd.DataFrame:
    """One row per image: its true class, the k best species with scores, its rank and whether it is right.

    Columns: ``image, true_class_id, true_species, rank, pred{i}_class_id, pred{i}_species, pred{i}_score``
    for i = 1..k (k clamped to the number of classes), ``correct@1, correct@{k}``. An unknown label (-1)
    has an empty true class, ``rank`` = C + 1, and is never correct.
    """
    s, y = _check(scores, labels)
    ids = _check_classes(s, class_ids)
    names = species_names(ids, species)
    paths = [str(p) for p in image_paths]
    if len(paths) != s.shape[0]:
        raise ScoreError(f"{len(paths)} image paths for {s.shape[0]} score rows")
    k_req = _check_k(k)
    order = topk_order(s, y, k_req)
    kk = order.shape[1]
    r = _ranks(s, y)
    data: dict[str, Any] = {
        "image": paths,
        "true_class_id": [ids[i] if i >= 0 else None for i in y],
        "true_species": [names[i] if i >= 0 else None for i in y],
        "rank": r,
    }
    rows = np.arange(s.shape[0])[:, None]
    top_scores = s[rows, order] if order.size else np.zeros((s.shape[0], 0))
    for j in range(kk):
        data[f"pred{j + 1}_class_id"] = [ids[i] for i in order[:, j]]
        data[f"pred{j + 1}_species"] = [names[i] for i in order[:, j]]
        data[f"pred{j + 1}_score"] = top_scores[:, j].astype(float)
    n_cls = s.shape[1]
    data["correct@1"] = (y >= 0) & (r <= 1)
    if k_req != 1:
        data[f"correct@{k_req}"] = (y >= 0) & (r <= min(k_req, n_cls))
    return pd.DataFrame(data)
