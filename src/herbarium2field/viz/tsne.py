"""The t-SNE figure: do field photos land on their species' herbarium sheets, or on a "field" island?

This is the project's headline picture (softmax on top, ArcFace below): a cross-domain embedding is good
when photos and sheets of a species share a cluster. Two numbers go with each panel so the picture is
not judged by eye alone: the species **silhouette** (how separated species are, cosine on the
embeddings) and **domain mixing** (share of a field photo's nearest neighbours that are sheets of its
own species).

Geometry: embeddings are L2-normalised and t-SNE runs on the Euclidean (chord) distance between them,
``sqrt(2 - 2 cos)``. That ranks neighbours exactly as cosine does, which is how the models compare
embeddings (ArcFace is trained on angles; prototype and gallery retrieval use cosine), and it keeps the
vector norm (which differs between domains and with image quality) from dominating the map. Euclidean on
unit vectors also works in every nearest-neighbour backend and treats a zero vector sanely.

Backend: openTSNE by default (PCA initialisation, seeded; Barnes-Hut below 10,000 points, FFT-accelerated
gradients above), scikit-learn with ``backend="sklearn"``. ``benchmarks/bench_tsne.py`` runs both side by
side with the same perplexity (30), initialisation, seed, metric and 750 iterations, thread pools capped,
on clustered 512-d embeddings, 2 shared CPU cores (results/tsne.json, results/tsne_20k.json):

- 5,000 points (the size of this project's training set), fastest of 3 interleaved runs, 1 thread:
  openTSNE 14.2 s vs scikit-learn 15.6 s (1.10x); 2 threads, under heavy load: 38.9 s vs 45.5 s. An
  earlier run on a quieter machine was a tie (13.1 s vs 13.1 s). Same quality: 10-NN preservation 0.381
  vs 0.380, trustworthiness@10 0.985 vs 0.985.
- 20,000 points, 1 run, 1 thread: openTSNE 43.3 s vs scikit-learn 104.5 s (2.4x faster), at slightly
  lower local fidelity (10-NN 0.188 vs 0.207, trustworthiness 0.945 vs 0.958).

So openTSNE is not slower at this project's size (within run-to-run noise on a shared machine) and pulls
ahead as the set grows (test photos added, more species).
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from herbarium2field.errors import H2FError
from herbarium2field.io import atomic_path
from herbarium2field.viz.style import OKABE_ITO, plt, save_figure

# Okabe-Ito without black (black is the edge colour of field photos), then three of Paul Tol's "muted"
# colours for up to 10 highlighted species. Beyond 7 the colours are less safe for colour-blind readers,
# which is why the default highlights 7.
SPECIES_COLORS = [c for c in OKABE_ITO if c != "#000000"] + ["#882255", "#999933", "#332288"]
OTHER_COLOR = "#c4c4c4"
#: The class id of a photo without a label (an unlabelled test set): its own colour, never a species.
UNLABELLED = "unlabelled"
UNLABELLED_COLOR = "#000000"
GROUP_COLORS = {True: "#0072B2", False: "#D55E00"}  # with pairs: blue, without pairs: vermillion
MARKERS = {"field": "o", "herbarium": "^"}
DOMAINS = ("herbarium", "field")
EXACT_NEIGHBOURS_MAX = 50_000  # exact kNN (thread-count independent, and faster than Annoy at this size)


# ---------------------------------------------------------------------------------------------- numbers


def _as_matrix(X: Any, what: str = "embeddings") -> np.ndarray:
    a = np.asarray(X, dtype=np.float64)
    if a.ndim != 2:
        raise H2FError(f"{what} must be a 2-D array [N points, D dims], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise H2FError(f"{what} contain NaN or inf values", hint="check the feature extraction of this run")
    return a


def l2_normalise(X: Any) -> np.ndarray:
    """Unit-length rows (zero rows stay zero), so Euclidean distance is the cosine geometry."""
    a = _as_matrix(X)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)


def tsne_2d(
    X: Any,
    perplexity: float = 30.0,
    seed: int = 0,
    n_jobs: int = 1,
    backend: Literal["opentsne", "sklearn"] = "opentsne",
    normalise: bool = True,
) -> np.ndarray:
    """2-D t-SNE coordinates ``[N, 2]`` of (by default L2-normalised) embeddings, seeded.

    The same seed gives the same map whatever ``n_jobs``, because nearest neighbours are exact up to
    50,000 points (openTSNE's approximate search depends on the thread count); a different BLAS or BLAS
    thread count can still move points (floating-point order). ``n_jobs`` defaults to 1: on a busy shared
    machine extra threads made it slower, not faster (bench_tsne: 38.9 s with 2 threads vs 14.2 s with 1
    under load; 8.8 s vs 13.1 s when quiet), so ask for more only on a machine of your own. Perplexity is
    clamped to ``(N - 1) / 3`` so tiny sets still embed; N <= 1 gives zeros. Backend: see the module
    docstring.
    """
    a = l2_normalise(X) if normalise else _as_matrix(X)
    n = a.shape[0]
    if n <= 1:
        return np.zeros((n, 2))
    perp = float(min(perplexity, max((n - 1) / 3.0, 1e-3)))
    if backend == "opentsne":
        from openTSNE import TSNE

        emb = TSNE(
            n_components=2,
            perplexity=perp,
            initialization="pca",
            metric="euclidean",
            neighbors="exact" if n <= EXACT_NEIGHBOURS_MAX else "auto",
            random_state=seed,
            n_jobs=n_jobs,
            verbose=False,
        ).fit(a)
        return np.asarray(emb, dtype=np.float64)
    if backend == "sklearn":
        from sklearn.manifold import TSNE as SkTSNE
        from threadpoolctl import threadpool_limits

        # Same schedule as openTSNE's default: 250 early-exaggeration + 500 iterations.
        iters = "max_iter" if "max_iter" in inspect.signature(SkTSNE).parameters else "n_iter"
        sk = SkTSNE(
            n_components=2,
            perplexity=perp,
            init="pca",
            metric="euclidean",
            learning_rate="auto",
            random_state=seed,
            n_jobs=n_jobs,
            **{iters: 750},
        )
        # scikit-learn's gradient uses every core through OpenMP whatever n_jobs says; honour n_jobs.
        with threadpool_limits(limits=n_jobs if n_jobs > 0 else None):
            return np.asarray(sk.fit_transform(a), dtype=np.float64)
    raise H2FError(f"unknown t-SNE backend {backend!r}", hint="use 'opentsne' or 'sklearn'")


def silhouette(
    X: Any, labels: Sequence[Any], metric: str = "cosine", sample_size: int | None = 10_000, seed: int = 0
) -> float | None:
    """Mean silhouette of ``labels`` (species): > 0 when points sit closer to their own species than to the
    next one. ``cosine`` on embeddings; pass ``metric="euclidean"`` for 2-D t-SNE coordinates.

    Above ``sample_size`` points a seeded random subset is scored (the exact score is O(N^2)). ``None``
    when it is undefined (fewer than 2 species, or every point its own species).
    """
    from sklearn.metrics import silhouette_score

    a = _as_matrix(X)
    y = np.asarray(labels)
    if y.shape != (a.shape[0],):
        raise H2FError(f"silhouette needs one label per point ({a.shape[0]}), got shape {y.shape}")
    n_lab = np.unique(y).size
    if n_lab < 2 or n_lab > a.shape[0] - 1:
        return None
    if metric == "cosine" and np.any(np.linalg.norm(a, axis=1) == 0):
        a = a + 1e-12  # cosine of a zero vector is undefined; nudge it instead of failing
    ss = sample_size if sample_size is not None and a.shape[0] > sample_size else None
    return float(silhouette_score(a, y, metric=metric, sample_size=ss, random_state=seed))


def domain_mixing(X: Any, class_idx: Sequence[Any], domain: Sequence[str], k: int = 10) -> float | None:
    """Mean share of each field photo's k nearest neighbours (cosine, itself excluded) that are herbarium
    sheets of its own species: 1 = photos sit among their species' sheets, 0 = a separate field island or
    the wrong species. ``None`` when there are no field photos or no herbarium sheets.
    """
    from sklearn.neighbors import NearestNeighbors

    a = l2_normalise(X)
    y = np.asarray(class_idx)
    d = np.asarray(domain).astype(str)
    n = a.shape[0]
    if y.shape != (n,) or d.shape != (n,):
        raise H2FError(
            f"domain_mixing needs one class and one domain per point ({n}), got {y.shape}, {d.shape}"
        )
    unknown = sorted(set(np.unique(d)) - set(DOMAINS))
    if unknown:
        raise H2FError(f"unknown domain value(s) {unknown}; expected 'herbarium' or 'field'")
    field = np.flatnonzero(d == "field")
    herb = d == "herbarium"
    if field.size == 0 or not herb.any() or n < 2:
        return None
    kk = int(min(k, n - 1))
    if kk < 1:
        raise H2FError(f"k must be >= 1, got {k}")
    nn = NearestNeighbors(n_neighbors=kk + 1, metric="euclidean").fit(a)
    _, idx = nn.kneighbors(a[field])
    # Drop the query itself (by index, not distance, so exact duplicates still count as neighbours); if a
    # duplicate pushed it out of the list, drop the farthest instead.
    self_hit = idx == field[:, None]
    drop = np.where(self_hit.any(axis=1), self_hit.argmax(axis=1), kk)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(field.size), drop] = False
    neigh = idx[keep].reshape(field.size, kk)
    good = herb[neigh] & (y[neigh] == y[field][:, None])
    return float(good.mean())


# ----------------------------------------------------------------------------------------------- panels


@dataclass
class TsnePanel:
    """One t-SNE map and its numbers; every per-point sequence has N entries."""

    title: str
    coords: np.ndarray  # [N, 2]
    class_ids: Sequence[str]
    species: Sequence[str]
    domain: Sequence[str]  # "herbarium" | "field"
    has_pairs: Sequence[bool]
    silhouette: float | None = None
    mixing: float | None = None
    images: Sequence[str] | None = None
    k: int = 10  # neighbours used for ``mixing`` (shown in the figure's note)

    def __post_init__(self) -> None:
        self.coords = np.asarray(self.coords, dtype=np.float64)
        n = self.coords.shape[0]
        if self.coords.ndim != 2 or self.coords.shape[1] != 2:
            raise H2FError(f"panel {self.title!r}: coords must be [N, 2], got {self.coords.shape}")
        for name in ("class_ids", "species", "domain", "has_pairs") + (
            ("images",) if self.images is not None else ()
        ):
            if len(getattr(self, name)) != n:
                raise H2FError(
                    f"panel {self.title!r}: {name} has {len(getattr(self, name))} entries for {n} points"
                )
        bad = sorted(set(map(str, self.domain)) - set(DOMAINS))
        if bad:
            raise H2FError(
                f"panel {self.title!r}: unknown domain value(s) {bad}; expected 'herbarium' or 'field'"
            )


def tsne_panel(
    title: str,
    X: Any,
    class_ids: Sequence[str],
    species: Sequence[str],
    domain: Sequence[str],
    has_pairs: Sequence[bool],
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    n_jobs: int = 1,
    k: int = 10,
    images: Sequence[str] | None = None,
) -> TsnePanel:
    """Embed ``X`` and compute the panel's silhouette and domain mixing (both on the embeddings)."""
    ids = np.asarray([str(c) for c in class_ids])
    known = ids != UNLABELLED  # unlabelled photos are drawn, but no species score can count them
    Xk = np.asarray(X)[known]
    return TsnePanel(
        title=title,
        coords=tsne_2d(X, perplexity=perplexity, seed=seed, n_jobs=n_jobs),
        class_ids=list(ids),
        species=list(species),
        domain=list(domain),
        has_pairs=list(map(bool, has_pairs)),
        silhouette=silhouette(Xk, ids[known], metric="cosine", seed=seed) if known.sum() > 2 else None,
        mixing=domain_mixing(Xk, ids[known], list(np.asarray(domain)[known]), k=k) if known.sum() > 2 else None,
        images=images,
        k=k,
    )


def save_tsne_csv(panels: TsnePanel | Sequence[TsnePanel], out_csv: str | Path) -> Path:
    """Write the 2-D coordinates (one row per point and panel) so the map can be re-plotted elsewhere.

    Columns: ``run, x, y, class_id, species, domain, has_pairs`` (+ ``image`` when the panels have it).
    """
    items = [panels] if isinstance(panels, TsnePanel) else list(panels)
    frames = []
    for p in items:
        f = pd.DataFrame(
            {
                "run": p.title,
                "x": p.coords[:, 0],
                "y": p.coords[:, 1],
                "class_id": [str(c) for c in p.class_ids],
                "species": list(p.species),
                "domain": list(p.domain),
                "has_pairs": [bool(h) for h in p.has_pairs],
            }
        )
        if p.images is not None:
            f["image"] = [str(i) for i in p.images]
        frames.append(f)
    df = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["run", "x", "y", "class_id", "species", "domain", "has_pairs"])
    )
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.5f")
    return Path(out_csv)


# ------------------------------------------------------------------------------------------------- plot


def _pick_highlight(panels: Sequence[TsnePanel], n: int) -> list[str]:
    """The most frequent species, split between the groups (with / without pairs) when both exist, so the
    figure shows how species without field photos behave too."""
    counts: dict[str, int] = {}
    pairs: dict[str, bool] = {}
    for p in panels:
        for c, h in zip(p.class_ids, p.has_pairs, strict=True):
            if str(c) == UNLABELLED:
                continue
            counts[str(c)] = counts.get(str(c), 0) + 1
            pairs.setdefault(str(c), bool(h))
    order = sorted(counts, key=lambda c: -counts[c])  # stable: first-seen order on ties
    wp = [c for c in order if pairs[c]]
    wo = [c for c in order if not pairs[c]]
    n_wo = min(len(wo), n // 2) if wp else min(len(wo), n)
    n_wp = min(len(wp), n - n_wo)
    n_wo = min(len(wo), n - n_wp)
    chosen = set(wp[:n_wp] + wo[:n_wo])
    return [c for c in order if c in chosen]


def _label(cid: str, name: str, width: int = 34) -> str:
    text = f"{cid} {name}" if name and name != cid else cid
    return textwrap.shorten(text, width=width, placeholder="…")


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _scatter(
    ax: plt.Axes,
    xy: np.ndarray,
    dom: np.ndarray,
    color: Any,
    size: float,
    alpha: float,
    zorder: float,
    edge: str = "#1a1a1a",
) -> None:
    for d in DOMAINS:
        m = dom == d
        if not m.any():
            continue
        field = d == "field"
        ax.scatter(
            xy[m, 0],
            xy[m, 1],
            s=size * (1.0 if field else 1.1),
            marker=MARKERS[d],
            c=color if isinstance(color, str) else np.asarray(color)[m],
            edgecolors=edge if field else "none",
            linewidths=0.45 if field else 0.0,
            alpha=alpha,
            zorder=zorder + (0.5 if field else 0.0),
            rasterized=True,
        )


def plot_tsne(
    panels: Sequence[TsnePanel],
    out_png: str | Path,
    *,
    color_by: Literal["species", "group"] = "species",
    n_highlight: int = 7,
    highlight: Sequence[str] | None = None,
    layout: Literal["rows", "cols"] = "rows",
    title: str | None = None,
    panel_size: tuple[float, float] = (7.0, 5.6),
) -> Path:
    """Several t-SNE maps with identical styling, stacked (``rows``, the headline layout) or side by side.

    Marker = domain (circle with dark edge = field photo, triangle = herbarium sheet; photos drawn on top).
    Colour, ``color_by="species"`` (default): the ``n_highlight`` most frequent species, about half with and
    half without pairs (or the class ids in ``highlight``), each in a colour-blind-safe colour and the same
    colour in every panel; all other species light grey underneath. A hundred distinct colours cannot be
    told apart, so a few named species show whether photos join their own sheets.
    ``color_by="group"`` colours every point by its species' group (with / without pairs) instead, useful to
    see whether the species without field photos separate from the rest.
    """
    panels = list(panels)
    if not panels:
        raise H2FError("plot_tsne needs at least one panel")
    if color_by not in ("species", "group"):
        raise H2FError(f"color_by must be 'species' or 'group', got {color_by!r}")
    n_highlight = max(0, min(int(n_highlight), len(SPECIES_COLORS)))
    names: dict[str, str] = {}
    pairs: dict[str, bool] = {}
    for p in panels:
        for c, s, h in zip(p.class_ids, p.species, p.has_pairs, strict=True):
            names.setdefault(str(c), str(s))
            pairs.setdefault(str(c), bool(h))
    chosen = (
        [str(c) for c in highlight][: len(SPECIES_COLORS)]
        if highlight is not None
        else _pick_highlight(panels, n_highlight)
    )
    colour_of = {c: SPECIES_COLORS[i] for i, c in enumerate(chosen)}

    n = len(panels)
    nrows, ncols = (n, 1) if layout == "rows" else (1, n)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False
    )
    total = max(len(p.coords) for p in panels)
    size = float(np.clip(2400.0 / max(total, 1), 5.0, 40.0))  # ~5000 points -> small markers
    for ax, p in zip(axes.ravel(), panels, strict=True):
        xy = p.coords
        dom = np.asarray([str(d) for d in p.domain])
        cid = np.asarray([str(c) for c in p.class_ids])
        unl = cid == UNLABELLED
        if unl.any():  # an unlabelled test set: its own colour on top, whatever the colouring of the rest
            _scatter(ax, xy[unl], dom[unl], UNLABELLED_COLOR, size * 0.9, 0.6, 4)
            xy, dom, cid = xy[~unl], dom[~unl], cid[~unl]
            p = replace(p, coords=xy, class_ids=list(cid), domain=list(dom),
                        species=[s for s, u in zip(p.species, unl, strict=True) if not u],
                        has_pairs=[h for h, u in zip(p.has_pairs, unl, strict=True) if not u], images=None)
        if color_by == "group":
            hp = np.asarray([bool(h) for h in p.has_pairs])
            for flag in (True, False):  # without pairs on top: the group the method is judged by
                m = hp == flag
                _scatter(ax, xy[m], dom[m], GROUP_COLORS[flag], size, 0.55, 2 + (not flag))
        else:
            hi = np.isin(cid, list(colour_of))
            _scatter(ax, xy[~hi], dom[~hi], OTHER_COLOR, size * 0.8, 0.5, 1, edge="#8a8a8a")
            cols = np.asarray([colour_of.get(c, OTHER_COLOR) for c in cid[hi]])
            _scatter(ax, xy[hi], dom[hi], cols, size * 1.6, 0.9, 3)
        n_f, n_h = int((dom == "field").sum()), int((dom == "herbarium").sum())
        ax.set_title(
            f"{p.title}\nsilhouette {_fmt(p.silhouette)}  ·  domain mixing {_fmt(p.mixing)}  ·  "
            f"{n_f} photos, {n_h} sheets",
            fontsize=9.5,
        )
        ax.set_aspect("equal", adjustable="box")  # t-SNE distances are isotropic; do not stretch them
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    handles, labels = _legend_entries(color_by, chosen, names, pairs, colour_of, panels)
    anchor_ax = axes[0, -1]
    anchor_ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        fontsize=8,
        handletextpad=0.4,
        borderaxespad=0.0,
    )
    ks = sorted({p.k for p in panels})
    note = (
        f"silhouette: by species, cosine on the embeddings (-1..1, higher = species better separated).\n"
        f"domain mixing: share of each field photo's {'/'.join(map(str, ks))} nearest neighbours (cosine) "
        "that are herbarium sheets of its own species (0..1)."
    )
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.text(0.01, -0.005, note, fontsize=7.5, color="#444444", va="top", ha="left")
    return save_figure(fig, out_png)


def _legend_entries(
    color_by: str,
    chosen: list[str],
    names: dict[str, str],
    pairs: dict[str, bool],
    colour_of: dict[str, str],
    panels: Sequence[TsnePanel],
) -> tuple[list[Any], list[str]]:
    def header(text: str) -> tuple[Any, str]:
        return Line2D([], [], linestyle="none"), r"$\bf{" + text.replace(" ", r"\ ") + "}$"

    def swatch(color: str) -> Any:
        return Line2D(
            [], [], marker="s", linestyle="none", markersize=7, markerfacecolor=color, markeredgecolor="none"
        )

    entries: list[tuple[Any, str]] = [header("Domain (marker)")]
    entries.append(
        (
            Line2D(
                [],
                [],
                marker="o",
                linestyle="none",
                markersize=6,
                markerfacecolor="#888888",
                markeredgecolor="#1a1a1a",
                markeredgewidth=0.8,
            ),
            "field photo",
        )
    )
    entries.append(
        (
            Line2D(
                [],
                [],
                marker="^",
                linestyle="none",
                markersize=6,
                markerfacecolor="#888888",
                markeredgecolor="none",
            ),
            "herbarium sheet",
        )
    )
    if color_by == "group":
        entries.append(header("Species group (colour)"))
        entries.append((swatch(GROUP_COLORS[True]), "with pairs (field photos in training)"))
        entries.append((swatch(GROUP_COLORS[False]), "without pairs (herbarium only)"))
    else:
        for flag, text in ((True, "Species with pairs"), (False, "Species without pairs")):
            group = [c for c in chosen if pairs.get(c, True) == flag]
            if group:
                entries.append(header(text))
                entries += [(swatch(colour_of[c]), _label(c, names.get(c, c))) for c in group]
        n_all = len([c for c in names if c != UNLABELLED])
        n_other = n_all - len(chosen)
        if n_other > 0:
            entries.append((swatch(OTHER_COLOR), f"other {n_other} species"))
    n_unl = sum(str(c) == UNLABELLED for p in panels for c in p.class_ids)
    if n_unl:
        entries.append((swatch(UNLABELLED_COLOR), f"unlabelled photos ({n_unl})"))
    return [h for h, _ in entries], [t for _, t in entries]
