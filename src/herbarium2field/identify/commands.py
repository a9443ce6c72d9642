"""What ``h2f index`` and ``h2f identify`` do, without the terminal output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from herbarium2field.data.images import load_rgb
from herbarium2field.data.manifest import Dataset, read_dataset
from herbarium2field.errors import H2FError, ImageError
from herbarium2field.identify.calibrate import recalibrate
from herbarium2field.retrieval.gallery import BuildReport, build_gallery
from herbarium2field.run.card import ModelCard, read_card
from herbarium2field.run.finalize import upgrade
from herbarium2field.run.load import load_model


@dataclass
class IndexResult:
    gallery: BuildReport
    calibration: dict[str, Any]
    calibration_up_to_date: bool
    dataset_root: Path
    skipped_entries: int
    upgraded: bool = False  # an older run was brought up to date first


def dataset_for(run: Path, card: ModelCard, data: Path | None) -> Dataset:
    """The run's dataset (``--data`` or the root recorded in the model card), lists and files checked."""
    root = data or card.dataset.get("root")
    if not root:
        raise H2FError("the model card does not say which dataset the model was trained on", path=run,
                       hint="pass it with --data ROOT")
    if not Path(root).exists():
        raise H2FError("the run's dataset is not there any more", path=root,
                       hint="pass its new location with --data ROOT")
    return read_dataset(root, check="exists", allow_missing=True)


def index_run(run: Path, *, data: Path | None = None, force: bool = False, target: float = 0.9,
              progress: bool = True, batch_size: int = 32, num_workers: int = 2) -> IndexResult:
    """Build (or confirm) the run's herbarium gallery and its confidence threshold; a run written by an older
    h2f is first brought up to date (fingerprint, split, prototypes, inference choice, calibration)."""
    run = Path(run)
    card = read_card(run)
    ds = dataset_for(run, card, data)
    upgraded = upgrade(run, card, ds, progress=progress, batch_size=batch_size, num_workers=num_workers)
    model = load_model(run, "torch")
    report = build_gallery(model, ds, force=force, progress=progress, batch_size=batch_size, num_workers=num_workers)
    cal, cal_fresh = recalibrate(run, target=target, force=force, model=model)
    return IndexResult(report, cal, cal_fresh, Path(ds.root), ds.skipped, upgraded)


def load_photos(paths: list[Path], min_side: int) -> tuple[list[Image.Image], list[str]]:
    """Read every photo; collect *all* unreadable ones into one error (one line per file)."""
    images, errors = [], []
    for p in paths:
        try:
            images.append(load_rgb(p, min_side=min_side))
        except ImageError as exc:
            errors.append(f"{p}: {exc.message}")
    if errors:
        raise PhotoErrors(errors)
    return images, [str(p) for p in paths]


class PhotoErrors(H2FError):
    """One or more photos could not be read; ``lines`` holds one message per file."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__(
            "\n".join(lines)
            if len(lines) == 1
            else f"{len(lines)} photos cannot be read:\n" + "\n".join(f"  {line}" for line in lines)
        )
