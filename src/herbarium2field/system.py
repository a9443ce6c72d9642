"""What this process may use of the machine."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container or ``taskset`` may allow fewer
    than the machine has); at least 1."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): above the core count, other jobs share the
    CPU, so a timing taken then is inflated."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None
