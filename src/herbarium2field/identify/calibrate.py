"""``h2f calibrate``: choose the "no confident match" threshold again, e.g. for another target precision.

The threshold is chosen at the end of training (``run.finalize``) on the run's validation photos, for the
confidence the run gives under its inference choice (see :mod:`herbarium2field.scoring.threshold` for the
rule). Those photos' outputs are stored in the run (``validation.npz``), so re-calibrating needs neither the
dataset nor a forward pass. The threshold is calibrated on single photos; for combined photos it is
conservative (agreeing photos raise the combined confidence).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from herbarium2field.run.artefacts import ValidationSet, load_calibration, save_calibration
from herbarium2field.run.finalize import calibrate_threshold
from herbarium2field.run.load import RunModel, load_model
from herbarium2field.scoring.threshold import DEFAULT_TARGET


def recalibrate(run: str | Path, *, target: float = DEFAULT_TARGET, force: bool = False,
                model: RunModel | None = None) -> tuple[dict[str, Any], bool]:
    """The run's calibration for ``target`` (recomputed unless it already is); returns ``(calibration, up_to_date)``."""
    model = model or load_model(run)
    old = load_calibration(model.run, model.card)
    if not force and old is not None and old.get("target_precision") == target:
        return old, True
    cal = calibrate_threshold(model, ValidationSet.load(model.run, model.card), target=target)
    save_calibration(model.run, model.card, cal)
    return load_calibration(model.run, model.card) or cal, False
