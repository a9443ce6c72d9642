"""Shared benchmark plumbing: machine description, JSON results, a printed Rich table."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herbarium2field.io import write_json
from herbarium2field.paths import project_root
from herbarium2field.run.card import environment
from herbarium2field.system import load_average, usable_cores

if TYPE_CHECKING:
    from rich.console import Console

RESULTS = project_root() / "benchmarks" / "results"


def machine_info() -> dict[str, Any]:
    """CPU/GPU, cores actually usable, versions and date: enough to compare numbers across machines.

    A benchmark adds what else its numbers depend on: ``{**machine_info(), "pillow": ...}``.
    """
    env = environment()
    return {
        "cpu": env["cpu"],
        "cores": env["cpu_count"],
        "usable_cores": usable_cores(),
        "gpus": env["gpus"],
        "platform": platform.platform(),
        "python": env["python"],
        "packages": env["packages"],
        "git_commit": env["git_commit"],
        "load_average_1min": load_average(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically."""
    return write_json(RESULTS / f"{name}.json", result)


def print_table(
    title: str,
    rows: list[dict[str, Any]],
    *,
    formats: dict[str, str] | None = None,
    console: Console | None = None,
) -> None:
    """One row per dict (its keys are the columns): text left-aligned, numbers right-aligned; floats as
    ``,.2f`` unless ``formats`` gives a column its own format spec (e.g. ``{"PSNR": ".1f"}``)."""
    from rich.console import Console
    from rich.table import Table

    formats = formats or {}
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col, justify="left" if isinstance(rows[0][col], str) else "right")
    for row in rows:
        table.add_row(
            *(
                format(v, formats[k]) if k in formats else f"{v:,.2f}" if isinstance(v, float) else str(v)
                for k, v in row.items()
            )
        )
    (console or Console()).print(table)
