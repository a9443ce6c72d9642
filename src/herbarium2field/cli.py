"""The ``h2f`` command line: each command is a thin call into the library modules.

User errors (:class:`~herbarium2field.errors.H2FError`) are printed as one clear message with exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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


@app.command(
    epilog="Examples:\n\n  h2f synth demo/data\n\n"
    "  h2f synth /tmp/tiny --species 5 --size 128 --test-per-species 2 --no-contact-sheet\n\n"
    "  h2f synth synth200 --species 200 --min-images 22 --max-images 50 --seed 3 --workers 8\n\n"
    "Same seed and options give byte-identical files. Re-running into a previous synth folder replaces "
    "it; any other non-empty folder is refused."
)
def synth(
    out: Annotated[
        Path, typer.Argument(help="Folder to write: new, empty, or a previous `h2f synth` output.")
    ],
    species: Annotated[int, typer.Option(help="Number of species (classes).")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed: the flora and every image derive from it.")] = 0,
    size: Annotated[int, typer.Option(help="Short side of the written JPEGs in px.")] = 256,
    min_images: Annotated[int, typer.Option(help="Training images of the rarest species.")] = 8,
    max_images: Annotated[int, typer.Option(help="Training images of the commonest species.")] = 40,
    imbalance: Annotated[
        float, typer.Option(help="Long-tail steepness: 0 = balanced, 1 = max..min power law.")
    ] = 1.0,
    field_fraction: Annotated[
        float, typer.Option(help="Share of field photos in the training images of species with pairs.")
    ] = 0.35,
    without_pairs: Annotated[
        float,
        typer.Option("--without-pairs", help="Share of species with herbarium sheets only in training."),
    ] = 0.4,
    test_per_species: Annotated[int, typer.Option(help="Test field photos per species (all species).")] = 3,
    workers: Annotated[int, typer.Option(help="Processes (0 = all available cores).")] = 0,
    contact_sheet: Annotated[
        bool, typer.Option("--contact-sheet/--no-contact-sheet", help="Also write OUT/contact_sheet.png.")
    ] = True,
) -> None:
    """Generate the built-in synthetic herbarium->field dataset (nothing to download)."""
    from rich.table import Table

    from herbarium2field.data.synth import contact_sheet as make_contact_sheet
    from herbarium2field.data.synth import generate_dataset

    summary = generate_dataset(
        out,
        species=species,
        min_images=min_images,
        max_images=max_images,
        field_fraction=field_fraction,
        without_pairs=without_pairs,
        test_per_species=test_per_species,
        size=size,
        imbalance=imbalance,
        seed=seed,
        workers=workers,
        progress=True,
    )
    train = summary.herbarium + summary.field
    table = Table(title=f"h2f synth -> {summary.root}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "species",
        f"{summary.species} ({summary.with_pairs} with pairs, {summary.without_pairs} without pairs)",
    )
    table.add_row("train herbarium sheets", f"{summary.herbarium}")
    table.add_row("train field photos", f"{summary.field} ({summary.field / max(train, 1):.0%} of training)")
    table.add_row("test field photos", f"{summary.test} ({test_per_species} per species)")
    table.add_row("train images per species", f"{summary.min_per_class} to {summary.max_per_class}")
    table.add_row(
        "speed",
        f"{summary.images} images in {summary.seconds:.1f} s "
        f"({summary.images_per_second:,.0f} images/s, {summary.workers} worker(s))",
    )
    console.print(table)
    if contact_sheet:
        png = make_contact_sheet(summary.root, summary.root / "contact_sheet.png")
        console.print(f"contact sheet: {png}")


@app.command(epilog="Examples:\n\n  h2f validate ../shared/data/aml-sample\n\n"
             "  h2f validate my_collection --allow-missing --report problems.csv\n\n"
             "  h2f validate ../shared/data/aml --check none")
def validate(
    root: Annotated[Path, typer.Argument(help="Dataset root: PlantCLEF/AML lists, train/herbarium folders, or a CSV.")],
    check: Annotated[str, typer.Option(help="How hard to look at images: none | exists | decode.")] = "decode",
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Skip unusable entries, report them.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write every problem to this CSV.")] = None,
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
    out: Annotated[Path | None, typer.Option(help="Output folder (default: stats/<dataset name>).")] = None,
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


@app.command(epilog="Examples:\n\n  h2f prepare ../shared/data/aml-sample\n\n"
             "  h2f prepare my_collection --size 288 --cache /scratch/h2f-cache --workers 8\n\n"
             "Re-running is cheap: unchanged images (same size and mtime) are reused, changed ones redone.")
def prepare(
    data: Annotated[Path, typer.Argument(help="Dataset root: PlantCLEF/AML lists, train/herbarium folders, or a CSV.")],
    size: Annotated[int | None, typer.Option(help="Short side of cached images in px (default: 320).")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="Cache folder (default: $H2F_CACHE/<dataset name>, else DATA/.h2f-cache).")] = None,
    workers: Annotated[int, typer.Option(help="Processes (0 = all available cores).")] = 0,
) -> None:
    """Cache every image resized to a short side of SIZE px, so that training decodes small JPEGs."""
    from herbarium2field.data.cache import DEFAULT_SIZE, prepare_cache
    from herbarium2field.data.manifest import read_dataset

    ds = read_dataset(data, check="none", allow_missing=True)
    if ds.errors:
        console.print(f"[yellow]{ds.skipped} list entr(ies) unusable and skipped[/yellow] "
                      f"(run `h2f validate {data}` for details).")
    paths = ds.table["path"].tolist()
    report = prepare_cache(ds.root, paths, size=size or DEFAULT_SIZE, cache_dir=cache, workers=workers)
    rate = report.written / report.seconds if report.seconds > 0 else 0.0
    console.print(f"{report.cache_dir}: [green]{report.written} written[/green] ({rate:,.0f} images/s), "
                  f"{report.reused} reused, "
                  + (f"[bold red]{len(report.failed)} failed[/bold red]" if report.failed else "0 failed")
                  + f" in {report.seconds:.1f} s", highlight=False)
    if report.failed:
        for rel, reason in report.failed[:20]:
            err_console.print(f"  {rel}: {reason}", highlight=False, markup=False)
        if len(report.failed) > 20:
            err_console.print(f"  ... and {len(report.failed) - 20} more")
        err_console.print("[bold red]some images could not be cached[/bold red]; they will be read from the "
                          "source (and fail there too if unreadable). Fix or remove them, then re-run.")
        raise typer.Exit(1)


@app.command(epilog="Examples:\n\n  h2f train configs/demo_arcface.yaml --data demo/data --name demo_arcface\n\n"
             "  h2f train configs/convnextv2_nano_arcface.yaml --data ../shared/data/aml --set train.epochs=40\n\n"
             "  h2f train configs/convnextv2_nano_arcface.yaml --set trainer.devices=4 --set trainer.strategy=ddp\n\n"
             "  h2f train --resume runs/demo_arcface")
def train(
    config: Annotated[Path | None, typer.Argument(help="Experiment YAML (see configs/).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset root (overrides data.root).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name: writes runs/NAME (overrides name).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any setting: key.sub=value.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run from its last.ckpt.")] = None,
) -> None:
    """Train a backbone + softmax/ArcFace head (PyTorch Lightning); writes runs/NAME/."""
    from herbarium2field.training.train import train_from_cli

    paths = train_from_cli(config, data=data, name=name, overrides=set_ or [], resume=resume)
    console.print(f"run written to [bold]{paths.root}[/bold]")


if __name__ == "__main__":
    main()
