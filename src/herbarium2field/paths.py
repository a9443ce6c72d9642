"""Where things live: the shared test data, the default cache and run folders.

Paths are settings (environment variables) with project-relative defaults, never machine paths.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The source checkout this package was installed from (tests and benchmarks live there)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """Real PlantCLEF list files and sample images for tests/benchmarks (``$H2F_SHARED_DATA``).

    Defaults to ``../shared/data`` next to the project checkout; absent on most users' machines.
    """
    env = os.environ.get("H2F_SHARED_DATA")
    return Path(env) if env else project_root().parent / "shared" / "data"


def runs_dir() -> Path:
    """Where ``h2f train`` writes run directories (``$H2F_RUNS``, default ``./runs``)."""
    return Path(os.environ.get("H2F_RUNS", "runs"))


def default_cache_dir(data_root: Path) -> Path:
    """Resized-image cache of a dataset: ``$H2F_CACHE/<dataset name>`` or ``<data root>/.h2f-cache``.

    Kept beside the data by default so that a read-only dataset can point elsewhere with ``$H2F_CACHE``.
    """
    env = os.environ.get("H2F_CACHE")
    if env:
        return Path(env) / Path(data_root).resolve().name
    return Path(data_root) / ".h2f-cache"
