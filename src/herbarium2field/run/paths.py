"""Every path of a run directory, in one place: no other module spells a run sub-path.

```
runs/<name>/
  config.yaml           resolved experiment config (h2f train)
  environment.json      package versions, git commit, hardware, command line
  model_card.json       classes, species, groups, preprocessing, head, embedding size, weights fingerprint
  metrics.csv           one row per epoch (h2f train)
  checkpoints/          best.ckpt, last.ckpt (h2f train)
  model.joblib          fitted alignment + classifier (h2f fit-classic)
  split.json            the validation split: its parameters and image paths
  prototypes.npz        per-class mean embedding of sheets and of photos, and their counts
  validation.npz        validation photos: paths, labels, embeddings, head logits
  inference.json        how the run ranks species (mode, prototype source, field weight, shift) and why
  calibration.json      the "no confident match" threshold and its precision/coverage on validation
  branch-<key>.npz      herbarium sheet views for the herbarium-only branch (when the ranking reserves places)
  gallery/              herbarium sheets: embeddings, faiss index, thumbnails (h2f index)
  export/               model.onnx + meta.json (h2f export)
  embeddings/           cached outputs of evaluated splits
  eval/<split>-<mode>/  h2f evaluate
  tb/                   TensorBoard logs
  report.md, report.html, figures/
```
A deployable bundle (``h2f export --format bundle``) is a folder with the same layout minus the
checkpoints, metrics and training logs, plus ``bundle.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---- written by training / fit-classic
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def card(self) -> Path:
        return self.root / "model_card.json"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def classifier(self) -> Path:
        return self.root / "model.joblib"

    @property
    def train_time(self) -> Path:
        return self.root / "train_time.json"

    # ---- what inference needs, written at the end of training (run.finalize)
    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def prototypes(self) -> Path:
        return self.root / "prototypes.npz"

    @property
    def validation(self) -> Path:
        return self.root / "validation.npz"

    @property
    def inference(self) -> Path:
        return self.root / "inference.json"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.json"

    def branch(self, key: str) -> Path:
        """Sheet views of the herbarium-only branch made with one set of settings (``key``: their hash)."""
        return self.root / f"branch-{key}.npz"

    # ---- derived by later commands
    @property
    def gallery(self) -> Path:
        return self.root / "gallery"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def onnx(self) -> Path:
        return self.export / "model.onnx"

    @property
    def onnx_meta(self) -> Path:
        return self.export / "meta.json"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, split: str, mode: str, tta: str | None = None) -> Path:
        return self.eval_root / f"{split}-{mode}{'-tta-' + tta if tta else ''}"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def bundle_marker(self) -> Path:
        return self.root / "bundle.json"

    @property
    def is_bundle(self) -> bool:
        return self.bundle_marker.is_file()
