"""Read a dataset root into one table: every image with its class, species, domain, split and pairs group.

Three layouts are understood (:func:`detect_layout`):

1. ``aml`` – the PlantCLEF-2020 / AML list layout (``list/train.txt``, ``list/test.txt``,
   ``list/groundtruth.txt``, ``list/species_list.txt``, ``list/class_with_pairs.txt``,
   ``list/class_without_pairs.txt``). The list files alone are enough for statistics.
2. ``folders`` – ``train/herbarium/<species>/*.jpg``, ``train/field/<species>/*.jpg`` (or ``photo``),
   optional ``test/<species>/*.jpg``: for people bringing their own collection.
3. ``csv`` – a manifest with columns ``path,class_id,domain,split`` (+ optional ``species``).

Reading never stops at the first bad line: every finding becomes a :class:`~herbarium2field.errors.Problem`
with file and line, so one run of ``h2f validate`` shows everything to fix. Rows with errors are dropped;
:func:`read_dataset` then raises with a summary unless ``allow_missing`` is set.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from herbarium2field.data.images import check_image
from herbarium2field.errors import H2FError, ImageError, Problem

DOMAINS = ("herbarium", "field")
SPLITS = ("train", "test")
COLUMNS = ["path", "image_id", "class_id", "species", "domain", "split", "has_pairs", "source", "line"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
FIELD_FOLDERS = ("field", "photo")

#: Problems that make an entry unusable; the entry is dropped (``--allow-missing``) or reading stops.
ERROR_KINDS = frozenset(
    {"malformed", "missing-image", "unknown-class", "duplicate", "unreadable-image", "bad-species-list"}
)
#: Dataset-level inconsistencies that lose no image: reported, never fatal.
WARNING_KINDS = frozenset({"empty-class", "pairs-mismatch", "unlabelled-test", "class-without-test"})

Check = Literal["none", "exists", "decode"]


@dataclass
class Dataset:
    """A dataset read from disk: the image table, the species list, and what was found wrong.

    ``table`` has one row per usable image with :data:`COLUMNS`; ``class_id`` is a string (PlantCLEF ids
    are integers, folder layouts use names). ``species`` maps class id to scientific name in the order that
    defines class indices everywhere (model heads, metrics, plots).
    """

    root: Path
    layout: str
    table: pd.DataFrame
    species: dict[str, str]
    problems: list[Problem] = field(default_factory=list)
    skipped: int = 0

    @property
    def class_ids(self) -> list[str]:
        return list(self.species)

    @property
    def with_pairs(self) -> set[str]:
        """Species that have field photos in the training split (the benchmark's 'with pairs' group)."""
        t = self.table
        return set(t.loc[(t.split == "train") & (t.domain == "field"), "class_id"].dropna())

    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.species)}

    def split(self, name: str) -> pd.DataFrame:
        return self.table[self.table.split == name].reset_index(drop=True)

    def abs_path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.kind in ERROR_KINDS]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.kind not in ERROR_KINDS]


def labels_of(table: pd.DataFrame, class_index: dict[str, int]) -> np.ndarray:
    """Class indices for a table; -1 for unlabelled rows or species unknown to the model."""
    return np.array([class_index.get(c, -1) if isinstance(c, str) else -1 for c in table.class_id.tolist()],
                    dtype=np.int64)


class DatasetError(H2FError):
    """The dataset has entries that cannot be used; the message summarises every problem."""

    def __init__(self, root: Path, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(
            summarize_problems(problems),
            path=root,
            hint="fix the entries above, or pass --allow-missing to skip them and keep going",
        )


def summarize_problems(problems: list[Problem], limit: int = 20) -> str:
    """A short human summary: counts per kind, then the first ``limit`` problems with file:line."""
    counts = Counter(p.kind for p in problems)
    head = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
    lines = [f"{len(problems)} problem(s): {head}"]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (run `h2f validate` for the full report)")
    return "\n".join(lines)


# ---- entry point -----------------------------------------------------------------------------------


def detect_layout(root: Path) -> tuple[str, Path]:
    """Return ``(layout, root)``; ``root`` may be a CSV file, a dataset folder, or its ``list/`` folder."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv", root
        raise H2FError("not a dataset: a file that is not a .csv manifest", path=root)
    if not root.is_dir():
        raise H2FError("dataset root does not exist", path=root,
                       hint="pass a folder with list/train.txt, a train/herbarium/<species>/ folder, or a .csv manifest")
    _refuse_interrupted_synth(root)
    if (root / "list" / "train.txt").is_file():
        return "aml", root
    if (root / "train.txt").is_file() and root.name == "list":
        return "aml", root.parent
    if (root / "manifest.csv").is_file():
        return "csv", root / "manifest.csv"
    if (root / "train" / "herbarium").is_dir():
        return "folders", root
    raise H2FError(
        "cannot tell the dataset layout",
        path=root,
        hint="expected list/train.txt (PlantCLEF/AML lists), train/herbarium/<species>/ folders, "
        "or a manifest.csv with columns path,class_id,domain,split",
    )


def _refuse_interrupted_synth(root: Path) -> None:
    """A folder that ``h2f synth`` did not finish has images but no lists: say so instead of half-reading it."""
    marker = root / ".h2f-synth.json"
    if marker.is_file():
        try:
            complete = json.loads(marker.read_text()).get("complete", True)
        except (OSError, ValueError):
            complete = True
        if not complete:
            raise H2FError("this synthetic dataset was not finished (h2f synth was interrupted)", path=root,
                           hint=f"run `h2f synth {root}` again")


def read_dataset(root: str | Path, *, check: Check = "exists", allow_missing: bool = False,
                 workers: int = 0) -> Dataset:
    """Read any supported layout into a :class:`Dataset` and validate it.

    ``check`` says how hard to look at images: ``"none"`` (lists only, e.g. for statistics of the real
    PlantCLEF lists that come without images), ``"exists"`` (the files are there), ``"decode"`` (every
    image decodes; slower). Raises :class:`DatasetError` on unusable entries unless ``allow_missing``.
    """
    layout, path = detect_layout(Path(root))
    reader = {"aml": _read_aml, "folders": _read_folders, "csv": _read_csv}[layout]
    rows, species, problems = reader(path)
    data_root = path.parent if layout == "csv" else path
    rows, problems = _drop_duplicates(rows, problems)
    if check != "none":
        rows, problems = _check_images(data_root, rows, problems, decode=check == "decode", workers=workers)
    table = _to_table(rows, species)
    problems += _dataset_warnings(table, species, path, layout)
    ds = Dataset(root=data_root, layout=layout, table=table, species=species, problems=problems)
    ds.skipped = len({(p.path, p.line) for p in ds.errors})
    if ds.errors and not allow_missing:
        raise DatasetError(path, ds.errors)
    return ds


# ---- rows --------------------------------------------------------------------------------------------


@dataclass
class _Row:
    path: str
    class_id: str | None
    domain: str
    split: str
    source: str
    line: int | None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` of non-blank, non-comment lines; tolerates CRLF, BOM and trailing spaces."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise H2FError(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})", path=path) from None
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield i, line


def _read_species_list(path: Path, problems: list[Problem]) -> dict[str, str]:
    species: dict[str, str] = {}
    for n, line in _lines(path):
        cid, sep, name = line.partition(";")
        cid, name = cid.strip(), name.strip()
        if not sep or not cid or not name or " " in cid:
            problems.append(Problem("bad-species-list", f"expected '<classid>; <species name>', got {line!r}",
                                    str(path), n))
        elif cid in species:
            problems.append(Problem("bad-species-list", f"class {cid} listed twice", str(path), n))
        else:
            species[cid] = name
    return species


def _read_id_list(path: Path, problems: list[Problem]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for n, line in _lines(path):
        if " " in line or "\t" in line:
            problems.append(Problem("malformed", f"expected one class id per line, got {line!r}", str(path), n))
        else:
            ids.setdefault(line, n)
    return ids


def _read_aml(root: Path) -> tuple[list[_Row], dict[str, str], list[Problem]]:
    lists = root / "list"
    problems: list[Problem] = []
    species_file = lists / "species_list.txt"
    species = _read_species_list(species_file, problems) if species_file.is_file() else {}
    rows: list[_Row] = []

    train_file = lists / "train.txt"
    for n, line in _lines(train_file):
        parts = line.split()
        where = (str(train_file), n)
        if len(parts) != 2:
            problems.append(Problem("malformed", f"expected '<path> <classid>', got {line!r}", *where))
            continue
        rel, cid = parts
        segs = rel.split("/")
        if len(segs) != 4 or segs[0] != "train" or segs[1] not in ("herbarium", *FIELD_FOLDERS):
            problems.append(Problem(
                "malformed", f"path {rel!r} is not train/herbarium/<classid>/<file> or train/photo/<classid>/<file>",
                *where))
            continue
        if segs[2] != cid:
            problems.append(Problem("malformed", f"path folder {segs[2]!r} disagrees with class id {cid!r}", *where))
            continue
        domain = "herbarium" if segs[1] == "herbarium" else "field"
        rows.append(_Row(rel, cid, domain, "train", *where))

    test_file, gt_file = lists / "test.txt", lists / "groundtruth.txt"
    truth: dict[str, tuple[str, int]] = {}
    if gt_file.is_file():
        for n, line in _lines(gt_file):
            parts = line.split()
            if len(parts) != 2:
                problems.append(Problem("malformed", f"expected '<path> <classid>', got {line!r}", str(gt_file), n))
                continue
            if parts[0] in truth:
                problems.append(Problem("duplicate", f"{parts[0]} already labelled at line {truth[parts[0]][1]}",
                                        str(gt_file), n))
                continue
            truth[parts[0]] = (parts[1], n)
    if test_file.is_file():
        listed = set()
        for n, line in _lines(test_file):
            parts = line.split()
            if len(parts) not in (1, 2):
                problems.append(Problem("malformed", f"expected '<path>', got {line!r}", str(test_file), n))
                continue
            rel = parts[0]
            listed.add(rel)
            cid = truth[rel][0] if rel in truth else (parts[1] if len(parts) == 2 else None)
            if cid is None and truth:
                problems.append(Problem("unlabelled-test", f"{rel} has no line in {gt_file.name}", str(test_file), n))
            rows.append(_Row(rel, cid, "field", "test", str(test_file), n))
        for rel, (cid, n) in truth.items():
            if rel not in listed:
                rows.append(_Row(rel, cid, "field", "test", str(gt_file), n))
    else:
        for rel, (cid, n) in truth.items():
            rows.append(_Row(rel, cid, "field", "test", str(gt_file), n))

    if not species:  # no species list: class ids name themselves
        species = {cid: cid for cid in sorted({r.class_id for r in rows if r.class_id}, key=_natural)}
    elif species_file.is_file():
        kept = []
        for r in rows:
            if r.class_id is not None and r.class_id not in species:
                problems.append(Problem("unknown-class", f"class {r.class_id} is not in {species_file.name}",
                                        r.source, r.line))
            else:
                kept.append(r)
        rows = kept

    for name in ("class_with_pairs.txt", "class_without_pairs.txt"):
        f = lists / name
        if f.is_file():
            for cid, n in _read_id_list(f, problems).items():
                if cid not in species:
                    problems.append(Problem("unknown-class", f"class {cid} is not in the species list", str(f), n))
    return rows, species, problems


def _read_folders(root: Path) -> tuple[list[_Row], dict[str, str], list[Problem]]:
    problems: list[Problem] = []
    rows: list[_Row] = []
    train = root / "train"
    sources = [("herbarium", train / "herbarium")] + [("field", train / f) for f in FIELD_FOLDERS]
    if (train / "field").is_dir() and (train / "photo").is_dir():
        problems.append(Problem("malformed", "both train/field and train/photo exist; both are read as field photos",
                                str(train)))
    for domain, folder in sources:
        rows += _walk_species(root, folder, domain, "train", problems)
    rows += _walk_species(root, root / "test", "field", "test", problems)
    names = sorted({r.class_id for r in rows if r.class_id}, key=_natural)
    return rows, {n: n.replace("_", " ") for n in names}, problems


def _walk_species(root: Path, folder: Path, domain: str, split: str, problems: list[Problem]) -> list[_Row]:
    if not folder.is_dir():
        return []
    rows = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                problems.append(Problem("malformed", f"image directly in {folder.name}/; put it in a species folder",
                                        str(entry)))
            continue
        for f in sorted(_iter_images(entry)):
            rows.append(_Row(f.relative_to(root).as_posix(), entry.name, domain, split, str(f), None))
    return rows


def _iter_images(folder: Path) -> Iterable[Path]:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                yield Path(dirpath) / name


def _read_csv(path: Path) -> tuple[list[_Row], dict[str, str], list[Problem]]:
    problems: list[Problem] = []
    rows: list[_Row] = []
    species: dict[str, str] = {}
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise H2FError(f"cannot read manifest: {exc.strerror}", path=path) from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = {"path", "class_id", "domain", "split"} - set(header)
        if missing:
            raise H2FError(f"manifest lacks column(s) {', '.join(sorted(missing))}; has {', '.join(header) or 'none'}",
                           path=path, line=1, hint="columns: path,class_id,domain,split[,species]")
        reader.fieldnames = header
        for n, rec in enumerate(reader, start=2):
            rec = {k: (v or "").strip() for k, v in rec.items() if k is not None}
            if not any(rec.values()):
                continue
            if None in rec or any(v is None for v in rec.values()):
                problems.append(Problem("malformed", "wrong number of fields", str(path), n))
                continue
            domain = {"photo": "field"}.get(rec["domain"].lower(), rec["domain"].lower())
            split = rec["split"].lower()
            if domain not in DOMAINS or split not in SPLITS or not rec["path"]:
                problems.append(Problem("malformed",
                                        f"domain must be herbarium|field and split train|test, got "
                                        f"domain={rec['domain']!r} split={rec['split']!r}", str(path), n))
                continue
            cid = rec["class_id"] or None
            if cid is None and split == "train":
                problems.append(Problem("malformed", "training image without class_id", str(path), n))
                continue
            if cid is not None:
                name = rec.get("species") or cid
                species.setdefault(cid, name)
            rows.append(_Row(rec["path"].replace("\\", "/"), cid, domain, split, str(path), n))
    return rows, dict(sorted(species.items(), key=lambda kv: _natural(kv[0]))), problems


# ---- checks ------------------------------------------------------------------------------------------


def _drop_duplicates(rows: list[_Row], problems: list[Problem]) -> tuple[list[_Row], list[Problem]]:
    seen: dict[str, _Row] = {}
    kept = []
    for r in rows:
        if r.path in seen:
            first = seen[r.path]
            at = f"{Path(first.source).name}:{first.line}" if first.line else Path(first.source).name
            problems.append(Problem("duplicate", f"{r.path} already listed at {at}", r.source, r.line))
        else:
            seen[r.path] = r
            kept.append(r)
    return kept, problems


def _check_images(root: Path, rows: list[_Row], problems: list[Problem], *, decode: bool,
                  workers: int) -> tuple[list[_Row], list[Problem]]:
    existing = _existing_files(root, {r.path.rsplit("/", 1)[0] if "/" in r.path else "" for r in rows})
    kept = []
    for r in rows:
        if r.path in existing:
            kept.append(r)
        else:
            problems.append(Problem("missing-image", f"{r.path} not found under {root}", r.source, r.line))
    if not decode:
        return kept, problems
    bad = find_unreadable(root, [r.path for r in kept], workers=workers)
    out = []
    for r in kept:
        if r.path in bad:
            problems.append(Problem("unreadable-image", f"{r.path}: {bad[r.path]}", r.source, r.line))
        else:
            out.append(r)
    return out, problems


def find_unreadable(root: Path, rel_paths: list[str], *, workers: int = 0) -> dict[str, str]:
    """Decode every image (JPEG in draft mode, so it is cheap) and return ``{path: reason}`` for failures."""
    paths = [str(root / p) for p in rel_paths]
    workers = workers or min(len(paths) // 64 + 1, os.cpu_count() or 1)
    if workers <= 1:
        reasons = list(map(_decode_reason, paths))
    else:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(_decode_reason, paths, chunksize=32))
    return {rel: why for rel, why in zip(rel_paths, reasons, strict=True) if why is not None}


def _decode_reason(path: str) -> str | None:
    try:
        check_image(path)
    except ImageError as exc:
        return exc.message
    return None


def _existing_files(root: Path, folders: set[str]) -> set[str]:
    """All files in the given folders, listed once per folder: far cheaper than one stat per image."""
    found: set[str] = set()
    for folder in folders:
        d = root / folder if folder else root
        try:
            with os.scandir(d) as it:
                prefix = f"{folder}/" if folder else ""
                found.update(prefix + e.name for e in it if e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def _dataset_warnings(table: pd.DataFrame, species: dict[str, str], path: Path, layout: str) -> list[Problem]:
    problems: list[Problem] = []
    train = table[table.split == "train"]
    counts = train.class_id.value_counts()
    for cid in species:
        if counts.get(cid, 0) == 0:
            problems.append(Problem("empty-class", f"class {cid} ({species[cid]}) has no training image"))
    test_labels = set(table.loc[table.split == "test", "class_id"].dropna())
    if test_labels:
        for cid in species:
            if cid not in test_labels and counts.get(cid, 0) > 0:
                problems.append(Problem("class-without-test", f"class {cid} ({species[cid]}) has no test image"))
    if layout == "aml":
        with_data = set(train.loc[train.domain == "field", "class_id"])
        lists = path / "list"
        for name, expect in (("class_with_pairs.txt", True), ("class_without_pairs.txt", False)):
            f = lists / name
            if not f.is_file():
                continue
            for n, cid in _lines(f):
                if cid in species and (cid in with_data) != expect:
                    have = "has" if cid in with_data else "has no"
                    problems.append(Problem("pairs-mismatch", f"class {cid} is listed here but {have} training field "
                                                              "photos; the data decide the group", str(f), n))
    return problems


def _to_table(rows: list[_Row], species: dict[str, str]) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "path": [r.path for r in rows],
            "image_id": [Path(r.path).stem for r in rows],
            "class_id": pd.array([r.class_id for r in rows], dtype="string"),
            "domain": pd.Categorical([r.domain for r in rows], categories=DOMAINS),
            "split": pd.Categorical([r.split for r in rows], categories=SPLITS),
            "source": [r.source for r in rows],
            "line": pd.array([r.line for r in rows], dtype="Int64"),
        }
    )
    with_pairs = set(table.loc[(table.split == "train") & (table.domain == "field"), "class_id"].dropna())
    table["has_pairs"] = table.class_id.isin(with_pairs) & table.class_id.notna()
    table["species"] = table.class_id.map(species).astype("string")
    return table


def _natural(s: str) -> tuple[int, int | str]:
    """Sort numeric ids numerically and names alphabetically."""
    return (0, int(s)) if s.isdigit() else (1, s)
