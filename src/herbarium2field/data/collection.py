"""A collection of photos to name (``h2f predict``): a folder, a text list or a CSV, read into one table.

- **folder**: every file below it (recursively, hidden files and folders skipped) whose *content* is an
  image (magic numbers, :func:`~herbarium2field.data.images.sniff_image_type`), whatever its name; other
  files are listed as problems ("not an image"), never read as photos.
- **text list**: one path per line (relative paths are relative to the list's folder); blank lines and
  ``#`` comments are ignored; a path listed twice is a problem.
- **CSV**: a ``path`` column (else the first column), relative to the CSV's folder; an ``observation``
  column (or the one named by ``group_by``) groups several photos of one plant into one observation.

Rows come in a stable order (a folder: by relative path; a list or CSV: file order), and each has an
observation id: the group's value, or the photo's path (relative to the folder, or as listed) without its
extension. A missing file or a file
that is not an image is a :class:`~herbarium2field.errors.Problem` naming the file (and line), and is left
out; it never stops the collection.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from herbarium2field.data.images import describe_unknown, sniff_image_type
from herbarium2field.errors import H2FError, Problem

COLUMNS = ("path", "observation", "source", "line")
_HEAD = 32


@dataclass
class Collection:
    """The photos to name: ``table`` (absolute ``path``, ``observation``, ``source``, ``line``) and what was
    left out."""

    root: Path
    table: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    kind: str = "folder"  # folder | list | csv

    @property
    def observations(self) -> list[str]:
        return list(dict.fromkeys(self.table.observation))


def read_collection(source: str | Path, *, group_by: str | None = None) -> Collection:
    """Read a folder, a text list (``.txt``/``.lst``) or a CSV of photos."""
    source = Path(source)
    if not source.exists():
        raise H2FError("no such folder or file", path=source, hint="pass a folder of photos, a text list or a CSV")
    if source.is_dir():
        if group_by:
            raise H2FError("--group-by needs a CSV input (a column of the CSV groups the photos)", path=source)
        return _read_folder(source)
    if source.suffix.lower() == ".csv":
        return _read_csv(source, group_by)
    if group_by:
        raise H2FError("--group-by needs a CSV input (a column of the CSV groups the photos)", path=source)
    return _read_list(source)


def _read_folder(root: Path) -> Collection:
    rows, problems = [], []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            kind = _sniff(path)
            if kind is None:
                reason = _not_an_image(path)
                problems.append(Problem("not-an-image", reason, str(path)))
                continue
            rel = path.relative_to(root)
            rows.append((str(path.resolve()), rel.with_suffix("").as_posix(), rel.as_posix(), None))
    rows.sort(key=lambda r: r[2])
    return Collection(root, _table(rows), problems, "folder")


def _read_list(path: Path) -> Collection:
    rows, problems = [], []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise H2FError(f"cannot read the list ({exc})", path=path) from None
    seen: set[str] = set()
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        obs = Path(line).with_suffix("").as_posix()
        if obs in seen:
            problems.append(Problem("duplicate", f"{line} is listed twice", str(path), n))
            continue
        seen.add(obs)
        rows += _checked(path.parent, line, obs, path, n, problems)
    return Collection(path.parent, _table(rows), problems, "list")


def _read_csv(path: Path, group_by: str | None) -> Collection:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            records = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise H2FError(f"cannot read the CSV ({exc})", path=path) from None
    if not records:
        raise H2FError("the CSV is empty", path=path)
    header = [h.strip() for h in records[0]]
    col = header.index("path") if "path" in header else 0
    group = group_by or ("observation" if "observation" in header else None)
    if group is not None and group not in header:
        raise H2FError(f"no column {group!r} in the CSV (columns: {', '.join(header)})", path=path, line=1)
    gcol = header.index(group) if group is not None else None
    rows, problems = [], []
    for n, rec in enumerate(records[1:], 2):
        if not any(c.strip() for c in rec):
            continue
        if len(rec) != len(header):
            problems.append(Problem("malformed", f"expected {len(header)} columns, got {len(rec)}", str(path), n))
            continue
        rel = rec[col].strip()
        obs = rec[gcol].strip() if gcol is not None else Path(rel).with_suffix("").as_posix()
        if gcol is not None and not obs:
            problems.append(Problem("malformed", f"empty {group!r}", str(path), n))
            continue
        rows += _checked(path.parent, rel, obs, path, n, problems)
    return Collection(path.parent, _table(rows), problems, "csv")


def _checked(base: Path, rel: str, observation: str, source: Path, line: int,
             problems: list[Problem]) -> list[tuple[str, str, str, int]]:
    """The row of one listed photo, or a problem for it."""
    p = Path(rel).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        problems.append(Problem("missing-image", f"{rel}: file not found", str(source), line))
        return []
    if _sniff(p) is None:
        problems.append(Problem("not-an-image", f"{rel}: {_not_an_image(p)}", str(source), line))
        return []
    return [(str(p.resolve()), observation, str(source), line)]


def _sniff(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return sniff_image_type(f.read(_HEAD))
    except OSError:
        return None


def _not_an_image(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return describe_unknown(f.read(64))[0]
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _table(rows: list[tuple[str, str, str, int | None]]) -> pd.DataFrame:
    t = pd.DataFrame(rows, columns=list(COLUMNS))
    t["observation"] = t["observation"].astype(str)
    return t
