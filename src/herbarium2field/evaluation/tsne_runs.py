"""``h2f tsne``: the embeddings of one or more runs mapped with t-SNE, with the same styling side by side
(the original project's headline figure: softmax above ArcFace), plus numbers beside the picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from herbarium2field.evaluation.outputs import SplitOutputs, split_outputs
from herbarium2field.io import write_json
from herbarium2field.run.load import load_model
from herbarium2field.viz.tsne import plot_tsne, save_tsne_csv, tsne_panel


def _outputs(run: Path, split: str, data: str | None) -> list[SplitOutputs]:
    model = load_model(run)
    splits = ["train", "test"] if split == "all" else [split]
    return [split_outputs(model, s, data=data, progress=True) for s in splits]


def tsne_runs(runs: list[Path], out: Path, *, split: str = "test", perplexity: float = 30.0, seed: int = 0,
              data: str | None = None, color_by: str = "species", layout: str = "rows") -> dict:
    """Write ``tsne.png``, ``tsne.csv`` (2-D coordinates) and ``tsne.json`` (silhouette, domain mixing)."""
    panels = []
    for run in runs:
        outs = _outputs(run, split, data)
        emb = np.concatenate([o.embeddings for o in outs])
        table = [o.table for o in outs]
        cids = [str(c) if isinstance(c, str) else "unlabelled" for t in table for c in t.class_id.tolist()]
        species = [str(s) if isinstance(s, str) else "unlabelled" for t in table for s in t.species.tolist()]
        domain = [str(d) for t in table for d in t.domain.tolist()]
        has_pairs = np.concatenate([o.with_pairs for o in outs])
        head = outs[0].card.model.get("head") or outs[0].card.model.get("classifier", "")
        panels.append(tsne_panel(f"{run.name} ({head}, {split})", emb, cids, species, domain, has_pairs,
                                 perplexity=perplexity, seed=seed,
                                 images=[p for t in table for p in t.path.tolist()]))
    out.mkdir(parents=True, exist_ok=True)
    png = plot_tsne(panels, out / "tsne.png", color_by=color_by, layout=layout)  # type: ignore[arg-type]
    csv = save_tsne_csv(panels, out / "tsne.csv")
    numbers = {"split": split, "perplexity": perplexity, "seed": seed,
               "runs": [{"run": r.name, "title": p.title, "points": len(p.coords), "silhouette": p.silhouette,
                         "domain_mixing": p.mixing, "k": p.k} for r, p in zip(runs, panels, strict=True)]}
    write_json(out / "tsne.json", numbers)
    return {"png": png, "csv": csv, "numbers": numbers}
