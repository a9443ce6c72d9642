"""The ``h2f`` command line: each command is a thin call into the library modules.

User errors (:class:`~herbarium2field.errors.H2FError`) are printed as one clear message with exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from herbarium2field.errors import H2FError

app = typer.Typer(
    name="h2f",
    help="herbarium2field: identify plant species in field photos, trained mostly on herbarium sheets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def main() -> None:
    """Entry point of the ``h2f`` console script."""
    try:
        app()
    except H2FError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)


# ---- commands -------------------------------------------------------------------------------------
# Each command lives below, in the order of the data flow: dataset -> images -> training ->
# evaluation -> identification. Import the library lazily so `h2f --help` stays fast.


if __name__ == "__main__":
    main()
