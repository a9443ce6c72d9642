"""The run directory: self-describing, so anyone can re-run or re-evaluate a model from it alone.

```
runs/<name>/
  config.yaml          resolved experiment config (every default spelled out)
  environment.json     package versions, git commit, hardware, command line
  model_card.json      classes, species, groups, preprocessing, head, embedding dim: what later commands read
  metrics.csv          one row per epoch
  checkpoints/best.ckpt, checkpoints/last.ckpt
  tb/                  TensorBoard logs
```
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

PACKAGES = ("herbarium2field", "torch", "torchvision", "timm", "lightning", "pytorch-metric-learning", "torchmetrics",
            "numpy", "pandas", "pillow", "scikit-learn", "faiss-cpu", "onnxruntime")


@dataclass
class RunPaths:
    root: Path

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
    checkpoint: str = "checkpoints/best.ckpt"
    validation: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        if not path.is_file():
            raise H2FError("not a run directory: model_card.json is missing", path=path.parent,
                           hint="pass a folder written by `h2f train` or `h2f fit-classic`")
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise H2FError(f"model card is damaged: {exc}", path=path) from None


def checkpoint_path(run: Path, card: ModelCard) -> Path:
    """The file that holds a run's weights, as the predictor loads it."""
    paths = RunPaths(Path(run))
    if card.kind == "network" and paths.best.is_file():
        return paths.best
    path = paths.root / card.checkpoint
    if not path.is_file():
        raise H2FError(
            "no model checkpoint in this run",
            path=path,
            hint="train it to the end (`h2f train`) or fit it (`h2f fit-classic`)",
        )
    return path


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


def load_network(run: str | Path, *, checkpoint: str = "best"):  # type: ignore[no-untyped-def]
    """Rebuild a trained :class:`~herbarium2field.models.network.H2FNet` (eval mode) and its card and config.

    No pretrained weights are fetched: everything comes from the checkpoint.
    """
    import torch

    from herbarium2field.config import load_config
    from herbarium2field.models.network import H2FNet

    paths = RunPaths(Path(run))
    card = ModelCard.load(paths.card)
    if card.kind != "network":
        raise H2FError(f"this run holds a {card.kind} model, not a network", path=paths.root)
    cfg = load_config(paths.config)
    ckpt = paths.checkpoints / f"{checkpoint}.ckpt"
    if not ckpt.is_file():
        ckpt = paths.root / card.checkpoint
    if not ckpt.is_file():
        raise H2FError("no checkpoint in this run", path=paths.checkpoints,
                       hint="train it to the end, or resume it with `h2f train --resume`")
    net = H2FNet(cfg.model, len(card.class_ids), load_weights=False)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    except Exception as exc:  # noqa: BLE001
        raise H2FError(f"cannot read checkpoint: {exc}", path=ckpt) from None
    prefix = "net."
    missing, unexpected = net.load_state_dict(
        {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
    if missing:
        raise H2FError(f"checkpoint lacks {len(missing)} tensors (e.g. {missing[0]})", path=ckpt)
    net.eval()
    return net, card, cfg
