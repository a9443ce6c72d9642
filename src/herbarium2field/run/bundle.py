"""Opening a run directory or a deployable bundle, folder or archive.

A bundle written as an archive (``.tar.gz``, ``.tgz``, ``.tar`` or ``.zip``) is unpacked once into
``$H2F_CACHE/bundles/<sha256 of the archive>/`` (default ``~/.cache/herbarium2field``) and used from there;
unpacking refuses members that would land outside that folder.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from herbarium2field.errors import H2FError
from herbarium2field.hashing import file_sha256

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_archive(path: Path) -> bool:
    return str(path).endswith(ARCHIVE_SUFFIXES)


def bundle_cache() -> Path:
    base = os.environ.get("H2F_CACHE") or Path.home() / ".cache" / "herbarium2field"
    return Path(base) / "bundles"


def open_run(path: Path) -> Path:
    """The folder to read: ``path`` itself, or where its archive is unpacked."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.is_file() and is_archive(path):
        out = bundle_cache() / file_sha256(path)[:16]
        if not (out / "model_card.json").is_file():
            _unpack(path, out)
        return out
    if not path.exists():
        raise H2FError("no such run directory or bundle", path=path)
    raise H2FError("not a run directory or a bundle archive", path=path,
                   hint=f"pass a folder, or an archive ending in {', '.join(ARCHIVE_SUFFIXES)}")


def _unpack(archive: Path, out: Path) -> None:
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if str(archive).endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    _inside(tmp, name, archive)
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")  # refuses absolute paths, links out, devices
        inner = [p for p in tmp.iterdir()]
        root = inner[0] if len(inner) == 1 and inner[0].is_dir() else tmp  # one top folder, or flat
        if not (root / "model_card.json").is_file():
            raise H2FError("the archive holds no model_card.json: not a bundle", path=archive)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(root, out)
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise H2FError(f"cannot unpack the bundle ({exc})", path=archive) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _inside(folder: Path, name: str, archive: Path) -> None:
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise H2FError(f"the archive member {name!r} would be written outside the bundle folder", path=archive)
