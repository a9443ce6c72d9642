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


@app.command(epilog="Examples:\n\n  h2f validate ../shared/data/aml-sample\n\n"
             "  h2f validate my_collection --allow-missing --report problems.csv\n\n"
             "  h2f validate ../shared/data/aml --check none")
def validate(
    root: Annotated[Path, typer.Argument(help="Dataset root: PlantCLEF/AML lists, train/herbarium folders, or a CSV.")],
    check: Annotated[str, typer.Option(help="How hard to look at images: none | exists | decode.")] = "decode",
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Skip unusable entries, report them.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write every problem to this CSV.")] = None,
    show: Annotated[int, typer.Option(help="Problems to print per kind.")] = 10,
    workers: Annotated[int, typer.Option(help="Processes for decoding (0 = all cores).")] = 0,
) -> None:
    """Check a dataset: list files, classes, duplicates, pairs groups, missing and unreadable images."""
    from herbarium2field.cli_output import print_dataset_overview, print_problems, write_problems_csv
    from herbarium2field.data.manifest import DatasetError, read_dataset

    if check not in ("none", "exists", "decode"):
        raise typer.BadParameter(f"--check must be none, exists or decode, not {check!r}")
    try:
        ds = read_dataset(root, check=check, allow_missing=True, workers=workers)  # type: ignore[arg-type]
    except DatasetError as exc:  # pragma: no cover - allow_missing=True never raises this
        raise AssertionError from exc
    print_dataset_overview(console, ds)
    print_problems(console, ds.problems, per_kind=show)
    if report:
        write_problems_csv(ds.problems, report)
        console.print(f"all problems written to [bold]{report}[/bold]")
    if ds.errors:
        if allow_missing:
            console.print(f"[yellow]{ds.skipped} entr(ies) skipped[/yellow]; the {len(ds.table)} others are usable.")
        else:
            console.print(f"[bold red]{len(ds.errors)} error(s)[/bold red]: fix them, or pass --allow-missing "
                          "to skip those entries.")
            raise typer.Exit(1)
    else:
        console.print(f"[bold green]ok[/bold green]: {len(ds.table)} images usable.")


@app.command(epilog="Examples:\n\n  h2f stats ../shared/data/aml --out stats/aml\n\n  h2f stats demo/data")
def stats(
    root: Annotated[Path, typer.Argument(help="Dataset root (list files alone are enough).")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: stats/<dataset name>).")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Skip malformed entries.")] = False,
) -> None:
    """Per-class herbarium/field counts, pairs groups, imbalance; CSV, Markdown and a balance plot."""
    from herbarium2field.cli_output import print_stats
    from herbarium2field.data.manifest import read_dataset
    from herbarium2field.data.stats import write_stats

    ds = read_dataset(root, check="none", allow_missing=allow_missing)
    out = out or Path("stats") / ds.root.resolve().name
    paths = write_stats(ds, out)
    print_stats(console, ds)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
