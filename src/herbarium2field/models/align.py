"""Feature-space domain alignment for frozen features: herbarium sheets made to look like field photos.

Species without field photos are learned from herbarium features only, but are identified from field
features; shifting the herbarium distribution onto the field one is the cheapest answer to that gap.
Everything is fitted on *training* features only; field photos to identify are never used.

- ``standardize``: each domain is centred and scaled with its own per-dimension mean/std (field photos,
  including new ones, with the field statistics).
- ``coral``: CORrelation ALignment (Sun, Feng & Saenko, AAAI 2016): herbarium features are whitened with
  their own covariance and re-coloured with the field covariance, ``x' = (x - mu_h) C_h^-1/2 C_f^1/2 + mu_f``;
  field features are unchanged. Both covariances get ``reg * trace(C)/D`` added to the diagonal (CORAL's
  "+ I" for standardised features, scale-free here), which keeps the map stable when there are fewer photos
  than dimensions. The mean shift (``mu_f``) is our addition to the original second-order alignment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from herbarium2field.errors import H2FError

ALIGNMENTS = ("none", "standardize", "coral")
DOMAINS = ("herbarium", "field")


@dataclass
class Alignment:
    """A fitted alignment; :meth:`transform` maps features of either domain (new photos: ``"field"``)."""

    kind: str = "none"
    reg: float = 1.0
    stats: dict[str, np.ndarray] = field(default_factory=dict)

    def transform(self, x: np.ndarray, domains: np.ndarray | str = "field") -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.kind == "none":
            return x
        d = _domains(domains, len(x))
        out = x.copy()
        if self.kind == "standardize":
            for name in DOMAINS:
                m = d == name
                if m.any():
                    out[m] = (x[m] - self.stats[f"mean_{name}"]) / self.stats[f"std_{name}"]
            return out
        if self.kind == "coral":
            m = d == "herbarium"
            if m.any():
                out[m] = (x[m] - self.stats["mean_herbarium"]) @ self.stats["matrix"] + self.stats[
                    "mean_field"
                ]
            return out
        raise AssertionError(self.kind)


def _domains(domains: np.ndarray | str, n: int) -> np.ndarray:
    d = np.full(n, domains, dtype=object) if isinstance(domains, str) else np.asarray(domains, dtype=object)
    if d.shape != (n,):
        raise ValueError(f"need one domain per row ({n}), got shape {d.shape}")
    bad = set(d.tolist()) - set(DOMAINS)
    if bad:
        raise H2FError(f"unknown domain(s) {sorted(map(str, bad))}", hint=f"use {' or '.join(DOMAINS)}")
    return d


def fit_alignment(x: np.ndarray, domains: np.ndarray, kind: str = "none", reg: float = 1.0) -> Alignment:
    """Fit ``kind`` on training features ``x`` [N, D] with their ``domains`` (``herbarium``/``field``)."""
    if kind not in ALIGNMENTS:
        raise H2FError(f"unknown alignment {kind!r}", hint=f"use one of {', '.join(ALIGNMENTS)}")
    if kind == "none":
        return Alignment("none", reg)
    if not reg > 0:
        raise H2FError(f"alignment regularisation must be > 0, got {reg}")
    x = np.asarray(x, dtype=np.float64)
    d = _domains(domains, len(x))
    counts = {name: int((d == name).sum()) for name in DOMAINS}
    if min(counts.values()) < 2:
        raise H2FError(
            f"--align {kind} needs at least 2 training images of each domain, found "
            f"{counts['herbarium']} herbarium sheets and {counts['field']} field photos",
            hint="use --align none, or train with --domains both on data that has field photos",
        )
    xs = {name: x[d == name] for name in DOMAINS}
    means = {name: xs[name].mean(axis=0) for name in DOMAINS}
    if kind == "standardize":
        stats = {}
        for name in DOMAINS:
            std = xs[name].std(axis=0)
            floor = max(float(np.median(std)) * 1e-3, 1e-8)  # dimensions that never vary stay finite
            stats[f"mean_{name}"] = means[name].astype(np.float32)
            stats[f"std_{name}"] = np.maximum(std, floor).astype(np.float32)
        return Alignment(kind, reg, stats)
    cov = {name: _regularised_cov(xs[name], reg) for name in DOMAINS}
    matrix = _sym_power(cov["herbarium"], -0.5) @ _sym_power(cov["field"], 0.5)
    return Alignment(
        kind,
        reg,
        {
            "matrix": matrix.astype(np.float32),
            "mean_herbarium": means["herbarium"].astype(np.float32),
            "mean_field": means["field"].astype(np.float32),
        },
    )


def _regularised_cov(x: np.ndarray, reg: float) -> np.ndarray:
    c = np.cov(x, rowvar=False)
    c = np.atleast_2d(c)
    lam = reg * float(np.trace(c)) / c.shape[0]
    return c + max(lam, 1e-12) * np.eye(c.shape[0])


def _sym_power(c: np.ndarray, p: float) -> np.ndarray:
    """``c ** p`` for a symmetric positive-definite matrix (eigendecomposition)."""
    w, v = np.linalg.eigh(c)
    w = np.clip(w, max(float(w.max()) * 1e-12, 1e-300), None)
    return (v * w**p) @ v.T
