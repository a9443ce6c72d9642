"""Fingerprints that decide whether a derived artefact (prototypes, calibration, gallery, ONNX export,
bundle) still belongs to the model it was made from.

The card records the fingerprint of the run's weights file (SHA-256, size, mtime) when training or fitting
ends; each derived file records :func:`model_fingerprint` of the card it was made with. Comparing the two
needs no checkpoint, so a bundle without one still checks its parts against each other. In a run, the
weights file itself is checked against the card, make-style cheaply: unchanged size and mtime mean
unchanged; otherwise the SHA-256 decides, so copying a run elsewhere (new mtimes, same bytes) is fine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from herbarium2field.errors import H2FError
from herbarium2field.hashing import file_sha256, lines_sha256
from herbarium2field.run.card import ModelCard, outdated
from herbarium2field.run.paths import RunPaths


def weights_fingerprint(run: Path, file: Path) -> dict[str, Any]:
    """Identity of a weights file of the run: its path in the run, size, mtime and SHA-256."""
    st = file.stat()
    return {"file": file.relative_to(Path(run)).as_posix(), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": file_sha256(file)}


def model_fingerprint(card: ModelCard, run: Path | None = None) -> dict[str, Any]:
    """What a derived artefact records of the model: the weights hash, the classes and the preprocessing."""
    if not card.fingerprint.get("sha256"):
        raise outdated(run or card.name, "weights fingerprint in its model card")
    return {"sha256": card.fingerprint["sha256"], "class_ids_sha256": lines_sha256(card.class_ids),
            "preprocessing": card.preprocessing}


def same_model(recorded: dict[str, Any] | None, card: ModelCard) -> bool:
    """Whether ``recorded`` (a :func:`model_fingerprint`) describes the model of ``card``."""
    if not recorded or not card.fingerprint.get("sha256"):
        return False
    return (recorded.get("sha256") == card.fingerprint["sha256"]
            and recorded.get("class_ids_sha256") == lines_sha256(card.class_ids)
            and recorded.get("preprocessing") == card.preprocessing)


def check_weights(run: Path, card: ModelCard) -> Path:
    """The run's weights file, checked to be the one the card describes (size + mtime, else SHA-256)."""
    fp = card.fingerprint
    if not fp.get("file"):
        raise outdated(run, "weights fingerprint in its model card")
    path = Path(run) / fp["file"]
    if not path.is_file():
        raise H2FError("the run's weights file is missing", path=path,
                       hint="a run needs its checkpoint (or model.joblib); a bundle needs --backend onnx")
    st = path.stat()
    if st.st_size == fp.get("size") and (st.st_mtime_ns == fp.get("mtime_ns") or file_sha256(path) == fp["sha256"]):
        return path
    raise H2FError("the weights file changed since the model card was written", path=path,
                   hint="restore the run's own checkpoint, or train/fit the run again")


def weights_file(run: Path, card: ModelCard) -> Path:
    """Where a run keeps its weights: the best checkpoint of a network, the fitted model of a classic run."""
    paths = RunPaths(Path(run))
    if card.fingerprint.get("file"):
        return paths.root / card.fingerprint["file"]
    return paths.best if card.kind == "network" else paths.root / card.checkpoint


def images_fingerprint(root: Path, rows: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over ``(relative path, class id, size, mtime)`` of each image, in a stable order."""
    lines = []
    for rel, cid in sorted(rows):
        try:
            st = os.stat(Path(root) / rel)
            lines.append(f"{rel}\t{cid}\t{st.st_size}\t{st.st_mtime_ns}")
        except OSError:
            lines.append(f"{rel}\t{cid}\tmissing")
    return lines_sha256(lines)
