"""Shared benchmark plumbing: machine description, JSON results, a printed Rich table."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

from herbarium2field.io import write_json
from herbarium2field.paths import project_root
from herbarium2field.training.run_dir import environment

RESULTS = project_root() / "benchmarks" / "results"


def machine_info() -> dict[str, Any]:
    """CPU/GPU, cores actually usable, versions and date: enough to compare numbers across machines."""
    env = environment()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": env["cpu"],
        "cores": env["cpu_count"],
        "usable_cores": usable,
        "gpus": env["gpus"],
        "platform": platform.platform(),
        "python": env["python"],
        "packages": env["packages"],
        "git_commit": env["git_commit"],
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    return write_json(RESULTS / f"{name}.json", result)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col, justify="left" if isinstance(rows[0][col], str) else "right")
    for row in rows:
        table.add_row(*(f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)
