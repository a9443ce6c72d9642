"""Fingerprints that decide when a derived artefact (gallery, calibration, ONNX export) must be rebuilt.

A derived file records the fingerprint of what it was made from: the model checkpoint (size, mtime and
SHA-256) and the list of images (a hash of every path, class, size and mtime). The model check is
make-style cheap: unchanged size and mtime mean unchanged; otherwise the SHA-256 decides, so copying
a run elsewhere (new mtimes, same bytes) does not force a rebuild.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from herbarium2field.errors import H2FError
from herbarium2field.hashing import file_sha256, lines_sha256
from herbarium2field.training.run_dir import ModelCard, checkpoint_path


def model_fingerprint(run: Path, card: ModelCard) -> dict[str, Any]:
    """What identifies the weights: the checkpoint's path in the run, size, mtime and SHA-256."""
    path = checkpoint_path(run, card)
    st = path.stat()
    return {
        "checkpoint": path.relative_to(Path(run)).as_posix(),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": file_sha256(path),
        "class_ids_sha256": lines_sha256(card.class_ids),
        "preprocessing": card.preprocessing,
    }


def same_model(recorded: dict[str, Any] | None, run: Path, card: ModelCard) -> bool:
    """Whether ``recorded`` (a :func:`model_fingerprint`) still describes the run's weights."""
    if not recorded:
        return False
    try:
        path = checkpoint_path(run, card)
    except H2FError:
        return False
    if recorded.get("checkpoint") != path.relative_to(Path(run)).as_posix():
        return False
    if recorded.get("class_ids_sha256") != lines_sha256(card.class_ids):
        return False
    if recorded.get("preprocessing") != card.preprocessing:
        return False
    st = path.stat()
    if recorded.get("size") == st.st_size and recorded.get("mtime_ns") == st.st_mtime_ns:
        return True
    return recorded.get("size") == st.st_size and recorded.get("sha256") == file_sha256(path)


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
