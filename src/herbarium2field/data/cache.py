"""A cache of dataset images resized to a fixed short side, so that data loading decodes ~0.15 MP JPEGs
instead of 1-3 MP originals (``h2f prepare``).

Layout (one folder per size, so several sizes can live side by side)::

    <cache dir>/size-320/index.json              {"format", "size", "recipe", "entries": {rel: [bytes, mtime_ns]}}
    <cache dir>/size-320/train/photo/1/2.jpg     mirror of the dataset tree (non-JPEG names get ".jpg" added)

An entry is fresh when the source file still has the size and modification time (ns) recorded when it
was cached: the usual make-style rule, one ``stat`` per file and no reading, so re-running over 100k
unchanged images takes seconds. Editing a file in place changes its mtime; the rare tool that keeps both
size and mtime would be missed (delete the cache folder then). Changing the size or the recipe (filter,
JPEG quality, format version) uses another folder / invalidates the index.

Crash safety: every image and the index are written to a hidden temporary file and moved into place with
``os.replace``; an image enters the index only after its file is in place, so the index never points at
a partial file. Temporary files left by an interrupted run are removed by the next one. One
``h2f prepare`` at a time per cache folder (enforced with a lock file where ``fcntl`` exists).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from herbarium2field.data.images import ImageError, load_rgb
from herbarium2field.errors import ConfigError, H2FError
from herbarium2field.paths import default_cache_dir
from herbarium2field.progress import image_progress
from herbarium2field.system import usable_cores

__all__ = [
    "DEFAULT_SIZE",
    "ImageSource",
    "PrepareReport",
    "cache_folder",
    "cached_image_path",
    "prepare_cache",
]

#: Default short side (px) of cached images. 320 serves, without upsampling: eval at 224 with timm's
#: usual crop_pct 0.875 (needs 256), test-time 288 at crop_pct 0.9-1.0 (needs 288-320), DINOv2 at 224
#: (16x16 patches of 14 px); and for RandomResizedCrop to 224 with the default scale (0.08, 1) the median
#: crop is ~0.7 of the short side, i.e. ~224 px of a 320 image: about native resolution, where 256 would
#: upsample it (~180 px), which blurs the small structures (venation, flowers) that identify a sheet.
DEFAULT_SIZE: int = 320

_FORMAT_VERSION = 1
# Everything that changes the bytes of a cached image; part of the index so a change invalidates it.
_RECIPE = "draft+lanczos(gap3)/exif/white-alpha/jpeg-q95-444"
_JPEG_OPTIONS = {"quality": 95, "subsampling": 0}  # 4:4:4: keep flower colours at this small size
_INDEX = "index.json"
_LOCK = ".lock"
_TMP_SUFFIX = ".tmp"
_FLUSH_SECONDS = 5.0
_MIN_SIZE, _MAX_SIZE = 16, 4096


@dataclass
class PrepareReport:
    """What :func:`prepare_cache` did; ``failed`` lists ``(relative path, reason)`` for skipped images."""

    cache_dir: Path
    size: int
    written: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.written + self.reused + len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed


# ---- layout ----------------------------------------------------------------------------------------


def cache_folder(root: Path, size: int, cache_dir: Path | None = None) -> Path:
    """The folder holding images of short side ``size`` for the dataset at ``root``."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir(Path(root))
    return base / f"size-{size}"


def _normalise(rel_path: str) -> str:
    """``rel_path`` as a clean POSIX path inside the dataset (the index key), or H2FError."""
    p = PurePosixPath(str(rel_path).replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts or str(p) == ".":
        raise H2FError(
            f"image path {rel_path!r} must be relative to the dataset folder and stay inside it",
            hint="list files use paths like train/herbarium/<classid>/<id>.jpg",
        )
    return str(p)


def _cache_file(folder: Path, rel: str) -> Path:
    name = rel if rel.lower().endswith((".jpg", ".jpeg")) else rel + ".jpg"
    return folder / name


def _source_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _check_size(size: int) -> None:
    if not isinstance(size, int) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise ConfigError(
            f"cache size must be a whole number of pixels in {_MIN_SIZE}..{_MAX_SIZE}, got {size!r}",
            hint=f"the default is {DEFAULT_SIZE}",
        )


# ---- index -----------------------------------------------------------------------------------------


def _read_index(folder: Path, size: int) -> dict[str, list[int]]:
    """The entries of ``folder``'s index; empty when absent, unreadable or made by another recipe
    (the cache is derived data: a bad index costs a rebuild, never an error)."""
    try:
        data = json.loads((folder / _INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("format") != _FORMAT_VERSION
        or data.get("size") != size
        or data.get("recipe") != _RECIPE
        or not isinstance(data.get("entries"), dict)
    ):
        return {}
    return {
        k: v
        for k, v in data["entries"].items()
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)
    }


def _write_index(folder: Path, size: int, entries: dict[str, list[int]]) -> None:
    """Write the index atomically (tmp + fsync + ``os.replace``): readers see the old or the new one."""
    payload = {"format": _FORMAT_VERSION, "size": size, "recipe": _RECIPE, "entries": entries}
    tmp = folder / f".{_INDEX}.{os.getpid()}{_TMP_SUFFIX}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / _INDEX)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise H2FError(
            f"cannot write the cache index ({exc.strerror or exc})", path=folder / _INDEX
        ) from None


def _remove_stale_tmp(folder: Path) -> int:
    """Delete temporary files left by an interrupted run (safe: we hold the folder's lock)."""
    n = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
    return n


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the docs say one prepare at a time
        yield
        return
    with open(folder / _LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise H2FError(
                "another `h2f prepare` is writing this cache right now",
                path=folder,
                hint="wait for it to finish, or pass a different --cache folder",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- preparing ---------------------------------------------------------------------------------------


_Task = tuple[str, str, str, list[int], int]  # rel, source, destination, source key, size


def _prepare_one(task: _Task) -> tuple[str, list[int], str | None]:
    """Decode, resize and write one image; returns ``(rel, key, error reason or None)``. Runs in workers."""
    rel, src, dst, key, size = task
    try:
        img = load_rgb(src, min_side=size)
    except ImageError as exc:
        return rel, key, exc.message
    except MemoryError:
        return rel, key, "out of memory while decoding (image too large?)"
    out = Path(dst)
    tmp = out.with_name(f".{out.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp, "JPEG", **_JPEG_OPTIONS)
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return rel, key, f"cannot write the cache file {out} ({exc.strerror or exc})"
    return rel, key, None


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group: let the parent handle it (terminate the pool, save the
    # index) instead of every worker printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def prepare_cache(
    root: Path,
    rel_paths: Sequence[str],
    *,
    size: int = DEFAULT_SIZE,
    cache_dir: Path | None = None,
    workers: int = 0,
    progress: bool = True,
) -> PrepareReport:
    """Write resized copies (short side ``size``, never upsampled) of ``root/<rel>`` for each path.

    Fresh entries are reused, new or changed sources (size/mtime) are (re)written, unreadable ones are
    reported in the result and skipped (their old cache entry is dropped); nothing raises for a bad
    image. ``workers``: processes (0 = one per available core, 1 = in this process). Interrupting
    (Ctrl-C) keeps everything finished so far. ``cache_dir`` defaults to
    :func:`herbarium2field.paths.default_cache_dir`.
    """
    _check_size(size)
    root = Path(root)
    t0 = time.perf_counter()
    folder = cache_folder(root, size, cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise H2FError(
            f"cannot create the cache folder ({exc.strerror or exc})",
            path=folder,
            hint="pass a writable folder with --cache or set $H2F_CACHE",
        ) from None
    report = PrepareReport(cache_dir=folder, size=size)
    with _locked(folder):
        _remove_stale_tmp(folder)
        index = _read_index(folder, size)
        todo: list[_Task] = []
        for rel in dict.fromkeys(_normalise(p) for p in rel_paths):
            src = root / rel
            dst = _cache_file(folder, rel)
            try:
                key = _source_key(src)
            except OSError:
                report.failed.append((rel, "image file not found"))
                if index.pop(rel, None) is not None:
                    with contextlib.suppress(OSError):
                        dst.unlink()
                continue
            if index.get(rel) == key and dst.is_file():
                report.reused += 1
            else:
                index.pop(rel, None)
                todo.append((rel, str(src), str(dst), key, size))
        _run(todo, index, report, folder, workers, progress)
    report.seconds = time.perf_counter() - t0
    return report


def _run(
    todo: list[_Task],
    index: dict[str, list[int]],
    report: PrepareReport,
    folder: Path,
    workers: int,
    progress: bool,
) -> None:
    """Process ``todo`` (in a pool if worth it), recording results in ``index`` and ``report``; the index
    is flushed every few seconds and always at the end, Ctrl-C included."""
    size = report.size
    workers = workers if workers > 0 else usable_cores()
    workers = min(workers, len(todo))
    pool = None
    last_flush = time.monotonic()
    try:
        if workers > 1:
            # spawn: safe with threads (Rich's refresh thread, torch) where fork can deadlock.
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_sigint)
            chunk = max(1, min(16, len(todo) // (workers * 8)))
            results = pool.imap_unordered(_prepare_one, todo, chunksize=chunk)
        else:
            results = map(_prepare_one, todo)
        with image_progress(len(todo), f"resizing to {size}px", show=progress) as advance:
            for rel, key, error in results:
                if error is None:
                    index[rel] = key
                    report.written += 1
                else:
                    report.failed.append((rel, error))
                    with contextlib.suppress(OSError):
                        _cache_file(folder, rel).unlink()
                advance(1)
                if time.monotonic() - last_flush > _FLUSH_SECONDS:
                    _write_index(folder, size, index)
                    last_flush = time.monotonic()
            if pool is not None:
                pool.close()
                pool.join()
                pool = None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _write_index(folder, size, index)


# ---- reading ---------------------------------------------------------------------------------------


def cached_image_path(root: Path, rel_path: str, *, size: int, cache_dir: Path | None = None) -> Path | None:
    """The cached file of ``rel_path`` at ``size``, or ``None`` when absent or stale.

    Reads the index on every call: for one-off look-ups. Data loaders use :class:`ImageSource`.
    """
    rel = _normalise(rel_path)
    folder = cache_folder(root, size, cache_dir)
    entry = _read_index(folder, size).get(rel)
    if entry is None:
        return None
    try:
        if _source_key(Path(root) / rel) != entry:
            return None
    except OSError:
        return None
    path = _cache_file(folder, rel)
    return path if path.is_file() else None


class ImageSource:
    """Opens dataset images by relative path as RGB with short side ``size`` (never upsampled): from the
    cache when fresh, else from the source file (JPEG draft-mode decode + resize), so results have the
    same geometry whether or not ``h2f prepare`` was run.

    Freshness is decided once, here (the index is read and each indexed source stat-ed once), not per
    item; the object is small and picklable, so DataLoader workers get it ready to use. Pass
    ``check_fresh=False`` to trust the index without any ``stat`` (huge datasets on slow storage).
    Sources edited after construction are served from the (then stale) cache until a new ImageSource.
    """

    def __init__(
        self,
        root: Path,
        *,
        size: int = DEFAULT_SIZE,
        cache_dir: Path | None = None,
        check_fresh: bool = True,
        use_cache: bool = True,
    ) -> None:
        _check_size(size)
        self.root = Path(root)
        self.size = size
        self.folder = cache_folder(self.root, size, cache_dir)
        entries = _read_index(self.folder, size) if use_cache else {}
        if check_fresh:
            entries = {rel: key for rel, key in entries.items() if self._still_fresh(rel, key)}
        self._cached: frozenset[str] = frozenset(entries)

    def _still_fresh(self, rel: str, key: list[int]) -> bool:
        try:
            return _source_key(self.root / rel) == key
        except OSError:
            return False

    def __len__(self) -> int:
        """Number of images served from the cache."""
        return len(self._cached)

    def is_cached(self, rel_path: str) -> bool:
        return _normalise(rel_path) in self._cached

    def file_for(self, rel_path: str) -> Path:
        """The file that holds ``rel_path``'s pixels: the cached copy when fresh, else the original (for
        readers that decode bytes themselves, e.g. :mod:`.decode`; they get the original's full size)."""
        rel = _normalise(rel_path)
        if rel in self._cached:
            path = _cache_file(self.folder, rel)
            if path.is_file():
                return path
        return self.root / rel

    def load(self, rel_path: str) -> Image.Image:
        """The image at ``root/rel_path`` as RGB, short side ``size``; :class:`ImageError` if unreadable."""
        rel = _normalise(rel_path)
        if rel in self._cached:
            try:
                return load_rgb(_cache_file(self.folder, rel))
            except ImageError:
                pass  # deleted or damaged cache file (e.g. power loss): the source is still good
        return load_rgb(self.root / rel, min_side=self.size)

    def __repr__(self) -> str:
        return f"ImageSource({str(self.root)!r}, size={self.size}, cached={len(self._cached)})"
