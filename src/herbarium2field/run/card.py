"""The model card: what a trained model is, in JSON (``model_card.json``). Every later command reads it
(once) instead of the config or the dataset: classes, species, groups, preprocessing, head, embedding size,
the fingerprint of the weights file, and where the model came from (environment).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from herbarium2field.errors import H2FError
from herbarium2field.io import write_json
from herbarium2field.paths import project_root
from herbarium2field.run.paths import RunPaths
from herbarium2field.scoring.taxonomy import Taxonomy

#: 2: the card records the weights fingerprint, and the run holds what inference needs (run.finalize)
CARD_FORMAT = 2
PACKAGES = ("herbarium2field", "torch", "torchvision", "timm", "lightning", "pytorch-metric-learning", "torchmetrics",
            "numpy", "pandas", "pillow", "scikit-learn", "faiss-cpu", "onnxruntime")


@dataclass
class ModelCard:
    """What a trained model is, in JSON: every later command (evaluate, embed, index, identify) reads this."""

    name: str
    kind: str  # "network" (h2f train) or "classic" (h2f fit-classic)
    class_ids: list[str]
    species: list[str]
    with_pairs: list[str]
    preprocessing: dict[str, Any]
    model: dict[str, Any]
    dataset: dict[str, Any]
    embedding_dim: int
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    h2f_version: str = field(default_factory=lambda: package_version("herbarium2field"))
    checkpoint: str = "checkpoints/best.ckpt"  # the weights file, relative to the run
    validation: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: identity of the weights file (``run.fingerprint.weights_fingerprint``); empty in cards written
    #: before format 2, which later commands then ask to bring up to date
    fingerprint: dict[str, Any] = field(default_factory=dict)
    format: int = CARD_FORMAT
    families: dict[str, str] = field(default_factory=dict)  # genus -> family, from a taxonomy file (optional)

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        if not path.is_file():
            raise H2FError("not a run directory: model_card.json is missing", path=path.parent,
                           hint="pass a folder written by `h2f train` or `h2f fit-classic`, or a bundle "
                           "written by `h2f export --format bundle`")
        try:
            data = json.loads(path.read_text())
            if "format" not in data:
                data["format"] = 1  # written before the card had a format
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise H2FError(f"model card is damaged: {exc}", path=path) from None

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def taxonomy(self) -> Taxonomy:
        """Genus of every class (from its scientific name) and family where the card knows it."""
        return Taxonomy.from_species(self.species, self.families)


def read_card(run: str | Path) -> ModelCard:
    """The card of a run (or bundle) directory."""
    return ModelCard.load(RunPaths(Path(run)).card)


def package_version(pkg: str) -> str:
    """Installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str | None:
    """Commit of the source checkout (with ``-dirty`` when it has uncommitted changes), if any."""
    root = project_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def environment() -> dict[str, Any]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "packages": {p: package_version(p) for p in PACKAGES},
        "git_commit": git_commit(),
        "command": sys.argv,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def outdated(run: str | Path, missing: str) -> H2FError:
    """The error for a run written by an older h2f that lacks ``missing``, naming the command that adds it."""
    return H2FError(f"this run was written by an older version of h2f and has no {missing}", path=run,
                    hint=f"bring it up to date once with `h2f index {run} --data DATASET_ROOT` (the dataset "
                    "it was trained on); after that it needs no dataset")
