"""PlantCLEF run files: the format the PlantCLEF 2020 task asks participants to submit, so that results of
``h2f predict`` can be submitted and results of other systems scored in our tables.

One prediction per line, semicolon-separated, no header: ``ObservationId;ClassId;Probability;Rank``. An
observation (one plant, possibly several photos) has up to k lines, its best species first; ``Rank`` orders
the predictions of an observation (it settles equal probabilities). In the AML/PlantCLEF test lists an
observation is one test photo, whose id is the file name without extension.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from herbarium2field.errors import H2FError
from herbarium2field.io import atomic_write_text

COLUMNS = ("observation", "class_id", "probability", "rank")


def write_run_file(path: Path, predictions: pd.DataFrame) -> Path:
    """Write ``predictions`` (columns ``observation, class_id, probability, rank``) in the run-file format."""
    lines = [f"{o};{c};{p:.6f};{int(r)}" for o, c, p, r in predictions[list(COLUMNS)].itertuples(index=False)]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_run_file(path: str | Path) -> pd.DataFrame:
    """A run file as a table; every malformed line is reported with its number (H2FError)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise H2FError(f"cannot read the run file ({exc})", path=path) from None
    rows, bad = [], []
    seen: dict[tuple[str, str], int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(";")]
        if len(parts) != 4 or not parts[0] or not parts[1]:
            bad.append(f"{path}:{n}: expected 'ObservationId;ClassId;Probability;Rank', got {line!r}")
            continue
        try:
            prob, rank = float(parts[2]), int(parts[3])
        except ValueError:
            bad.append(f"{path}:{n}: probability and rank must be numbers, got {parts[2]!r} and {parts[3]!r}")
            continue
        if not 0.0 <= prob <= 1.0 or rank < 1:
            bad.append(f"{path}:{n}: probability must be in [0, 1] and rank >= 1, got {prob} and {rank}")
            continue
        key = (parts[0], parts[1])
        if key in seen:
            bad.append(f"{path}:{n}: class {parts[1]} of observation {parts[0]} already predicted at line {seen[key]}")
            continue
        seen[key] = n
        rows.append((parts[0], parts[1], prob, rank))
    if bad:
        raise H2FError(f"{len(bad)} malformed line(s) in the run file:\n  " + "\n  ".join(bad[:20])
                       + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""))
    if not rows:
        raise H2FError("the run file holds no predictions", path=path)
    return pd.DataFrame(rows, columns=list(COLUMNS))
