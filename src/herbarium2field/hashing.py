"""SHA-256 digests that decide whether something changed: a file's bytes, or an ordered list of lines.

One definition, so that a fingerprint recorded by one command (feature cache, gallery, calibration, ONNX
export) is recomputed byte for byte by another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents, read in ``chunk``-byte blocks (weights files are large)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def lines_sha256(lines: Iterable[str]) -> str:
    """Hex SHA-256 of ``lines`` in order, each followed by a newline."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()
