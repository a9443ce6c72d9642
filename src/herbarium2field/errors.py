"""User-facing errors.

Everything a user can cause (bad files, bad options, unknown classes) raises :class:`H2FError`, which
the CLI prints as one clear message without a traceback. Internal invariants use ``assert``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def where(path: str | Path | None, line: int | None = None) -> str:
    """Format a location as ``file:line`` (or just ``file``) for messages."""
    if path is None:
        return ""
    return f"{path}:{line}" if line is not None else str(path)


class H2FError(Exception):
    """An error the user can fix; the message names the file (and line) and says what to do."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 hint: str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.hint = hint
        self.message = message
        loc = where(path, line)
        text = f"{loc}: {message}" if loc else message
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class ImageError(H2FError):
    """An image file that cannot be turned into an RGB picture (corrupt, truncated, too large, not an image)."""


class ConfigError(H2FError):
    """A configuration file or option that is invalid."""


@dataclass(frozen=True)
class Problem:
    """One finding of dataset validation, located in a list file (or image) and line."""

    kind: str  # e.g. "missing-image", "unknown-class", "duplicate", "malformed", "empty-class", ...
    message: str
    path: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        loc = where(self.path, self.line)
        return f"{loc}: [{self.kind}] {self.message}" if loc else f"[{self.kind}] {self.message}"
