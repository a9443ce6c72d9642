"""``h2f report``: one Markdown report (and a self-contained HTML copy with images inlined) per run,
gathering what a reader would put in a paper's appendix: config, dataset statistics, training curves,
metrics per species group, confusions and the t-SNE map."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import markdown
import yaml

from herbarium2field.data.manifest import read_dataset
from herbarium2field.data.stats import class_counts, imbalance, summary
from herbarium2field.evaluation.evaluate import evaluate_run, metrics_markdown
from herbarium2field.evaluation.tsne_runs import tsne_runs
from herbarium2field.io import atomic_write_text
from herbarium2field.run.card import ModelCard, read_card
from herbarium2field.run.paths import RunPaths
from herbarium2field.viz.balance import plot_class_balance
from herbarium2field.viz.curves import plot_training_curves

HTML_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1100px; margin: 2rem auto;
       padding: 0 1rem; color: #1f2a1f; line-height: 1.5; }
h1, h2, h3 { color: #24452b; } img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccd5cc; padding: 0.3rem 0.6rem; } th { background: #eef3ee; }
code, pre { background: #f5f7f5; } pre { padding: 0.8rem; overflow-x: auto; }
"""


def build_report(run: str | Path, *, split: str = "test", with_tsne: bool = True,
                 data: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``runs/<name>/report.md`` and ``report.html``; evaluates the run first if it never was (or on
    ``data``, another dataset: an unlabelled test set gets its predictions and a t-SNE map, no accuracy)."""
    run = Path(run)
    paths = RunPaths(run)
    card = read_card(run)
    if data is not None or not list(paths.eval_root.glob(f"{split}-*/metrics.json")):
        evaluate_run(run, split=split, mode="both", data=data)
    figures = paths.figures
    sections = [f"# {card.name}", "", _summary(card), ""]
    sections += _dataset_section(card, figures)
    if paths.metrics.is_file():
        plot_training_curves(paths.metrics, figures / "training_curves.png", title=f"{card.name}: training")
        sections += ["## Training curves", "", "![training curves](figures/training_curves.png)", ""]
    sections += _metrics_section(run, split)
    if with_tsne:
        numbers = tsne_runs([run], figures, split="all", data=str(data) if data is not None else None
                            )["numbers"]["runs"][0]
        sections += ["## Embeddings (t-SNE)", "",
                     f"Silhouette by species {_num(numbers['silhouette'])}, domain mixing "
                     f"{_num(numbers['domain_mixing'])} (share of each field photo's {numbers['k']} nearest "
                     "neighbours that are herbarium sheets of its own species).", "", "![t-SNE](figures/tsne.png)", ""]
    sections += _config_section(paths)
    md = "\n".join(sections)
    md_path = atomic_write_text(paths.report_md, md)
    html_path = atomic_write_text(paths.report_html, to_html(md, run, title=f"h2f report: {card.name}"))
    return md_path, html_path


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _summary(card: ModelCard) -> str:
    m = card.model
    if card.kind == "network":
        what = (f"**{m.get('backbone')}** with a **{m.get('head')}** head, embedding {card.embedding_dim}-d, "
                f"input {card.preprocessing.get('input_size')} px, weights: {m.get('weights')}.")
    else:
        what = f"**{m.get('classifier')}** on frozen **{m.get('backbone')}** features ({card.embedding_dim}-d)."
    n_pairs = len(card.with_pairs)
    return (f"{what} {len(card.class_ids)} species ({n_pairs} with field photos in training, "
            f"{len(card.class_ids) - n_pairs} without). Created {card.created} with herbarium2field "
            f"{card.h2f_version}.")


def _dataset_section(card: ModelCard, figures: Path) -> list[str]:
    root = card.dataset.get("root")
    if not root or not Path(root).exists():
        return ["## Dataset", "", f"`{root}` (not available here).", ""]
    ds = read_dataset(root, check="none", allow_missing=True)
    s, imb = summary(ds), imbalance(class_counts(ds))
    plot_class_balance(class_counts(ds), figures / "class_balance.png", title=f"Training images per species: {root}")
    return ["## Dataset", "",
            f"`{root}`: {s['train_herbarium']} herbarium sheets and {s['train_field']} field photos for training, "
            f"{s['test']} test photos; {s['with_pairs_classes']} species with pairs, "
            f"{s['without_pairs_classes']} without. Training images per species: {imb.min}–{imb.max} "
            f"(Gini {imb.gini:.3f}). Validation: {card.dataset.get('val_images', 0)} held-out training images.",
            "", "![class balance](figures/class_balance.png)", ""]


def _metrics_section(run: Path, split: str) -> list[str]:
    out = [f"## Results on the {split} split", ""]
    for f in sorted(RunPaths(run).eval_root.glob(f"{split}-*/metrics.json")):
        m = json.loads(f.read_text())
        if not m.get("labelled", True):
            out += [f"### {f.parent.name}", "", m.get("note", ""), ""]
            continue
        rel = f.parent.relative_to(run).as_posix()
        out += [f"### {m.get('mode', f.parent.name)}{' + TTA ' + m['tta'] if m.get('tta') else ''}", "",
                metrics_markdown(m), "", f"Details: [{rel}/report.md]({rel}/report.md)", "",
                f"![confusion matrix]({rel}/confusion.png)", ""]
    return out


def _config_section(paths: RunPaths) -> list[str]:
    out = ["## Configuration", ""]
    if paths.config.is_file():
        out += ["```yaml", paths.config.read_text().rstrip(), "```", ""]
    if paths.environment.is_file():
        env = json.loads(paths.environment.read_text())
        keep = {k: env.get(k) for k in ("python", "platform", "cpu", "gpus", "git_commit", "packages")}
        out += ["Environment:", "", "```yaml", yaml.safe_dump(keep, sort_keys=False).rstrip(), "```", ""]
    return out


def to_html(md: str, base: Path, *, title: str) -> str:
    """Markdown → one self-contained HTML page: every local PNG is inlined as a data URI."""
    body = markdown.markdown(md, extensions=["tables", "fenced_code"])

    def inline(match: re.Match[str]) -> str:
        src = match.group(1)
        f = base / src
        if src.startswith(("http:", "https:", "data:")) or not f.is_file():
            return match.group(0)
        data = base64.b64encode(f.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{HTML_STYLE}</style>"
            f"</head><body>\n{body}\n</body></html>\n")
