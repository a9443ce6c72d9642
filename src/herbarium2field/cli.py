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
    genus_size: Annotated[int, typer.Option(
        help="Species per genus: congeners share a genus name and a look (1 = every species alone).")] = 1,
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
        genus_size=genus_size,
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


@app.command(epilog="Examples:\n\n  h2f train recommended_lite0_cpu --data ../shared/data/aml-sample --name rec\n\n"
             "  h2f train configs/demo_arcface.yaml --data demo/data --name demo_arcface\n\n"
             "  h2f train configs/convnextv2_nano_arcface.yaml --data ../shared/data/aml --set train.epochs=40\n\n"
             "  h2f train configs/convnextv2_nano_arcface.yaml --set trainer.devices=4 --set trainer.strategy=ddp\n\n"
             "  h2f train --resume runs/demo_arcface")
def train(
    config: Annotated[str | None, typer.Argument(
        help="Experiment YAML: a path, or the name of a packaged config (`h2f configs` lists them).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset root (overrides data.root).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name: writes runs/NAME (overrides name).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any setting: key.sub=value.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run from its last.ckpt.")] = None,
) -> None:
    """Train a backbone + softmax/ArcFace head (PyTorch Lightning); writes runs/NAME/ with everything
    identification needs (prototypes, inference choice, calibration)."""
    from herbarium2field.features.recipe import train_recipe
    from herbarium2field.run.artefacts import InferenceChoice
    from herbarium2field.run.card import read_card
    from herbarium2field.training.train import config_from_cli

    cfg = config_from_cli(config, data=data, name=name, overrides=set_ or [], resume=resume)
    paths = train_recipe(cfg, resume=resume)
    if paths.inference.is_file():
        console.print(f"inference: {InferenceChoice.load(paths.root, read_card(paths.root)).describe()}")
    console.print(f"run written to [bold]{paths.root}[/bold]")


@app.command("configs", epilog="Examples:\n\n  h2f configs\n\n  h2f train recommended --data my_collection")
def configs_command() -> None:
    """List the experiment configs shipped with the package (usable by name in `h2f train NAME`)."""
    from rich.table import Table

    from herbarium2field.config import PACKAGED, packaged_configs

    table = Table(title=f"packaged configs ({PACKAGED})", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("what")
    for name, what in packaged_configs().items():
        table.add_row(name, what)
    console.print(table)


@app.command(epilog="Examples:\n\n  h2f evaluate runs/demo_arcface\n\n"
             "  h2f evaluate runs/demo_arcface --mode both --prototype-source shifted\n\n"
             "  h2f evaluate runs/convnextv2_nano_arcface --split val --tta flip\n\n"
             "  h2f evaluate runs/lite0_logreg  # a classic run from h2f fit-classic\n\n"
             "  h2f evaluate my_team_run1.txt --data ../shared/data/aml  # a PlantCLEF run file, any system's")
def evaluate(
    run: Annotated[Path, typer.Argument(
        help="Run directory (h2f train or h2f fit-classic), or a PlantCLEF run file (needs --data).")],
    data: Annotated[str | None, typer.Option(help="Dataset root (default: the one the run was trained on).")] = None,
    split: Annotated[str, typer.Option(help="test | val | train.")] = "test",
    mode: Annotated[str | None, typer.Option(
        help="classifier | prototype | both (default: the run's inference.mode).")] = None,
    prototype_source: Annotated[str | None, typer.Option(
        help="Prototype embeddings: herbarium | field | both | weighted | shifted | calibrated (default: the run's).")] = None,
    field_weight: Annotated[float | None, typer.Option(help="Field share of 'weighted'/'shifted' prototypes.")] = None,
    tta: Annotated[str | None, typer.Option(help="Test-time augmentation: flip | multicrop.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals (0 = none).")] = 1000,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Skip missing images.")] = False,
    workers: Annotated[int, typer.Option(help="Data loader processes.")] = 2,
    backend: Annotated[str, typer.Option(help="auto | torch | onnx (needs h2f export).")] = "auto",
) -> None:
    """Top-1/top-5/MRR overall, with pairs and without pairs (95% CIs), genus level, per class, confusions."""
    from herbarium2field.cli_output import print_metrics
    from herbarium2field.evaluation.evaluate import evaluate_run
    from herbarium2field.evaluation.runfile import evaluate_run_file

    if run.is_file():
        if data is None:
            raise H2FError("scoring a run file needs --data ROOT, the dataset whose ground truth it answers",
                           path=run)
        score = evaluate_run_file(run, data=data, n_boot=n_boot)
        print_metrics(console, score.result)
        if score.missing_observations or score.unknown_observations:
            console.print(f"[yellow]{score.missing_observations} test observation(s) missing from the file "
                          f"(counted wrong), {score.unknown_observations} in the file but not in the ground "
                          "truth[/yellow]")
        console.print(f"written to [bold]{score.result.out_dir}[/bold]")
        return
    for r in evaluate_run(run, data=data, split=split, mode=mode, tta=tta, prototype_source=prototype_source,
                          field_weight=field_weight, n_boot=n_boot, allow_missing=allow_missing, progress=True,
                          num_workers=workers, backend=backend):
        console.print(f"{r.mode}: {r.choice}", highlight=False)
        print_metrics(console, r)
        console.print(f"written to [bold]{r.out_dir}[/bold]")


@app.command(epilog="Examples:\n\n  h2f tsne runs/demo_softmax runs/demo_arcface\n\n"
             "  h2f tsne runs/convnextv2_nano_arcface --split all --perplexity 50 --color-by group")
def tsne(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories (shown with the same styling).")],
    split: Annotated[str, typer.Option(help="all (train + test: both domains) | test | train | val.")] = "all",
    perplexity: Annotated[float, typer.Option(help="t-SNE perplexity.")] = 30.0,
    color_by: Annotated[str, typer.Option(help="species (a few named species) | group (with/without pairs).")]
    = "species",
    layout: Annotated[str, typer.Option(help="rows (stacked, the headline figure) | cols.")] = "rows",
    out: Annotated[Path | None, typer.Option(help="Output folder (default: tsne/<run names>).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    data: Annotated[str | None, typer.Option(
        help="Map another dataset's images (an unlabelled test set is shown in its own colour).")] = None,
) -> None:
    """t-SNE of the embeddings, several runs side by side, with silhouette and domain-mixing scores."""
    from herbarium2field.evaluation.tsne_runs import tsne_runs

    if split not in ("test", "train", "val", "all"):
        raise typer.BadParameter(f"--split must be test, train, val or all, not {split!r}")
    out = out or Path("tsne") / "_vs_".join(r.name for r in runs)
    res = tsne_runs(runs, out, split=split, perplexity=perplexity, seed=seed, color_by=color_by, layout=layout,
                    data=data)
    for r in res["numbers"]["runs"]:
        sil, mix = r["silhouette"], r["domain_mixing"]
        console.print(f"{r['run']}: silhouette {sil if sil is None else f'{sil:.3f}'}, "
                      f"domain mixing {mix if mix is None else f'{mix:.3f}'} ({r['points']} points)")
    console.print(f"wrote [bold]{res['png']}[/bold] and {res['csv']}")


@app.command(epilog="Examples:\n\n  h2f compare runs/demo_softmax runs/demo_arcface\n\n"
             "  h2f compare runs/* --split test --rank-by top5_overall --out docs/results")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (their eval/<split>-*/ results).")],
    split: Annotated[str, typer.Option(help="Which evaluations to compare.")] = "test",
    rank_by: Annotated[str, typer.Option(help="Column to rank by: {top1,top5,mrr}_{overall,with_pairs,without_pairs}.")]
    = "top1_without_pairs",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("comparison"),
) -> None:
    """Markdown table + grouped bar chart of top-1/top-5/MRR by species group, ranked."""
    from herbarium2field.cli_output import print_comparison
    from herbarium2field.evaluation.compare import compare as run_compare

    table, _, png = run_compare(runs, out, split=split, rank_by=rank_by)
    print_comparison(console, table)
    console.print(f"wrote [bold]{out / 'comparison.md'}[/bold] and {png}")


@app.command(epilog="Examples:\n\n  h2f report runs/demo_arcface\n\n  h2f report runs/lite0_logreg --no-tsne\n\n"
             "  h2f report runs/demo_arcface --data field_trip_unlabelled  # predictions and a map, no accuracy")
def report(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    split: Annotated[str, typer.Option(help="Split whose evaluations are reported.")] = "test",
    tsne: Annotated[bool, typer.Option("--tsne/--no-tsne", help="Include a t-SNE map.")] = True,
    data: Annotated[Path | None, typer.Option(
        help="Report on another dataset's test split (labelled or not) instead of the run's own.")] = None,
) -> None:
    """One report.md (+ self-contained HTML) with config, dataset, curves, metrics, confusions, t-SNE."""
    from herbarium2field.evaluation.report import build_report

    md, html = build_report(run, split=split, with_tsne=tsne, data=data)
    console.print(f"wrote [bold]{md}[/bold] and {html}")


# ---- identification for people: gallery, calibration, identify, ONNX export, web server (issue 6) ------


@app.command(epilog="Examples:\n\n  h2f index runs/demo_arcface\n\n"
             "  h2f index runs/convnextv2_nano_arcface --data ../shared/data/aml --force\n\n"
             "Writes RUN/gallery/ (embeddings, thumbnails, faiss index); a run written by an older h2f also gets "
             "what inference needs. Re-running is cheap: the gallery is rebuilt only when the model or the images "
             "change (or with --force).")
def index(
    run: Annotated[Path, typer.Argument(help="Run directory (h2f train or h2f fit-classic).")],
    data: Annotated[Path | None, typer.Option(help="Dataset root (default: the one the run was trained on).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if up to date.")] = False,
    target_precision: Annotated[float, typer.Option(
        help="Precision at rank 1 the 'confident' threshold must give on validation photos.")] = 0.9,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    workers: Annotated[int, typer.Option(help="Data loader processes.")] = 2,
) -> None:
    """Build the run's herbarium gallery (embeddings, thumbnails, faiss index) and calibrate its threshold."""
    from herbarium2field.identify.commands import index_run
    from herbarium2field.scoring.threshold import describe_threshold as describe

    if not 0 < target_precision <= 1:
        raise typer.BadParameter("--target-precision must be in (0, 1]")
    res = index_run(run, data=data, force=force, target=target_precision, batch_size=batch_size,
                    num_workers=workers)
    if res.upgraded:
        console.print("brought the run up to date (weights fingerprint, split, prototypes, inference choice, "
                      "calibration): it no longer needs the dataset to identify")
    g = res.gallery
    if g.up_to_date:
        console.print(f"gallery [green]up to date[/green]: {g.images} herbarium sheets in {g.folder}")
    else:
        console.print(f"gallery built ({g.reason}): [bold]{g.images}[/bold] herbarium sheets, {g.index}, "
                      f"in {g.seconds:.1f} s -> {g.folder}")
    for rel, reason in g.skipped[:20]:
        err_console.print(f"  skipped {rel}: {reason}", highlight=False, markup=False)
    if len(g.skipped) > 20:
        err_console.print(f"  ... and {len(g.skipped) - 20} more skipped")
    state = "[green]up to date[/green]" if res.calibration_up_to_date else "calibrated"
    console.print(f"confidence {state}: {describe(res.calibration)}", highlight=False)


@app.command(epilog="Examples:\n\n  h2f calibrate runs/demo_arcface\n\n"
             "  h2f calibrate runs/demo_arcface --target-precision 0.95\n\n"
             "Needs only the run: the validation photos' outputs are stored in it at the end of training.")
def calibrate(
    run: Annotated[Path, typer.Argument(help="Run directory or bundle.")],
    target_precision: Annotated[float, typer.Option(help="Precision at rank 1 to reach on validation photos.")] = 0.9,
    force: Annotated[bool, typer.Option("--force", help="Recompute even if up to date.")] = False,
) -> None:
    """Choose the 'no confident match' threshold on the run's validation photos (done at the end of training)."""
    from herbarium2field.identify.calibrate import recalibrate
    from herbarium2field.scoring.threshold import describe_threshold

    if not 0 < target_precision <= 1:
        raise typer.BadParameter("--target-precision must be in (0, 1]")
    cal, fresh = recalibrate(run, target=target_precision, force=force)
    console.print(("[green]up to date[/green]: " if fresh else "") + describe_threshold(cal), highlight=False)
    comb = cal.get("combination", {})
    for key, row in comb.items():
        if key.startswith("groups_of_"):
            console.print(f"  {row['groups']} groups of {key[10:]} photos of one species: top-1 "
                          f"mean of probabilities {row['probabilities']:.1%}, "
                          f"geometric mean {row['geometric']:.1%} (single photos {comb['single']['top1']:.1%})")


@app.command(epilog="Examples:\n\n  h2f identify runs/demo_arcface photo.jpg\n\n"
             "  h2f identify runs/demo_arcface leaf.jpg flower.jpg --top-k 3\n\n"
             "  h2f identify bundle.tar.gz photo.jpg --json\n\n"
             "Several photos are taken as photos of ONE plant and combined into one answer. Needs the run (or a "
             "bundle from `h2f export --format bundle`) with its gallery (`h2f index`), never the training data.")
def identify(
    run: Annotated[Path, typer.Argument(help="Run directory with a gallery (h2f index), or a bundle.")],
    photos: Annotated[list[Path], typer.Argument(help="One or more field photos of the same plant.")],
    top_k: Annotated[int, typer.Option(help="Species to list.")] = 5,
    sheets: Annotated[int, typer.Option(help="Herbarium sheets shown per species.")] = 3,
    json_: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
    backend: Annotated[str, typer.Option(help="auto (onnx for a bundle) | torch | onnx (needs h2f export).")] = "auto",
    combine: Annotated[str, typer.Option(
        help="How photos are combined: probabilities (mean) | geometric (mean of log-probabilities).")] = "probabilities",
    species: Annotated[Path | None, typer.Option(
        "--species", help="Checklist file: only these species are candidates (ids or names, one a line).")] = None,
) -> None:
    """Identify a plant from field photos: likely species with the herbarium sheets that back the answer."""
    import json as json_lib

    from herbarium2field.identify.commands import PhotoErrors, load_photos
    from herbarium2field.identify.render import print_identification
    from herbarium2field.identify.service import Identifier, photo_min_side
    from herbarium2field.run.bundle import open_run
    from herbarium2field.run.card import read_card
    from herbarium2field.scoring.combine import COMBINE_METHODS

    if combine not in COMBINE_METHODS:
        raise typer.BadParameter(f"--combine must be one of {', '.join(COMBINE_METHODS)}")
    if top_k < 1 or sheets < 0:
        raise typer.BadParameter("--top-k must be >= 1 and --sheets >= 0")
    folder = open_run(run)
    card = read_card(folder)
    try:  # photos first: a bad photo is reported at once, before the model loads
        images, names = load_photos(photos, photo_min_side(card.preprocessing["input_size"]))
    except PhotoErrors as exc:
        for line in exc.lines:
            err_console.print(f"[bold red]error:[/bold red] {line}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    ident = Identifier(folder, backend=backend, card=card, checklist=species)
    answer = ident.identify(images, names, top_k=top_k, sheets=sheets, method=combine)
    if json_:
        print(json_lib.dumps(answer, indent=2))
    else:
        print_identification(console, answer)


@app.command(epilog="Examples:\n\n  h2f predict runs/demo_arcface field_trip/ --out names.csv\n\n"
             "  h2f predict bundle.tar.gz photos.csv --group-by plant_id --out names.parquet\n\n"
             "  h2f predict runs/arcface ../shared/data/aml/test --format plantclef --out myteam_run1.txt\n\n"
             "Killed? Run the same command again: finished chunks are kept and the file ends the same. Files "
             "that are not images or cannot be read go to OUT.problems.csv and are skipped.")
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory, or a bundle (h2f export --format bundle).")],
    input_: Annotated[Path, typer.Argument(
        metavar="INPUT", help="A folder of photos (recursive), a text list of paths, or a CSV (path column).")],
    out: Annotated[Path, typer.Option(help="Output: .csv or .parquet (a table), or a run file with --format plantclef.")],
    format_: Annotated[str | None, typer.Option(
        "--format", help="table (from OUT's extension) | plantclef (ObservationId;ClassId;Probability;Rank).")] = None,
    group_by: Annotated[str | None, typer.Option(
        help="CSV column whose equal values are photos of one plant (default: 'observation' if present).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Species per observation (default 5; 30 for plantclef).")] = None,
    sheets: Annotated[int, typer.Option(help="Best herbarium sheets listed for the top species.")] = 3,
    species: Annotated[Path | None, typer.Option(
        "--species", help="Checklist file: only these species are candidates (ids or names, one a line).")] = None,
    combine: Annotated[str, typer.Option(help="How an observation's photos combine: probabilities | geometric.")]
    = "probabilities",
    backend: Annotated[str, typer.Option(help="auto (onnx for a bundle) | torch | onnx.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Photos per forward pass.")] = 32,
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 2,
    chunk_size: Annotated[int, typer.Option(help="Photos per chunk written (the unit of resuming).")] = 1024,
    force: Annotated[bool, typer.Option("--force", help="Discard an unfinished prediction made differently.")] = False,
) -> None:
    """Name every photo (or observation) of a folder, list or CSV; write the answers to one file."""
    from herbarium2field.identify.predict import predict_collection

    rep = predict_collection(run, input_, out, fmt=format_, backend=backend, top_k=top_k, sheets=sheets,
                             group_by=group_by, combine=combine, checklist=species, batch_size=batch_size,
                             num_workers=workers, chunk_size=chunk_size, force=force)
    console.print(f"{rep.out}: {rep.written} of {rep.observations} observations answered ({rep.photos} photos; "
                  f"{rep.predicted_now} run now at {rep.images_per_s:,.1f} images/s, {rep.resumed_chunks} chunk(s) "
                  f"kept from before)", highlight=False)
    if rep.problems:
        err_console.print(f"[yellow]{rep.problems} file(s) skipped[/yellow]: see {rep.problems_file}", highlight=False)


@app.command(epilog="Examples:\n\n  h2f export runs/demo_arcface --format onnx\n\n"
             "  h2f export runs/demo_arcface --format bundle deploy/demo_arcface\n\n"
             "  h2f export runs/demo_arcface --format bundle demo_arcface.tar.gz\n\n"
             "onnx writes RUN/export/model.onnx (+ meta.json), checked against PyTorch (then use --backend onnx). "
             "bundle writes a folder or archive that `h2f serve` and `h2f identify` use on a machine without the "
             "training data or the PyTorch checkpoint (run `h2f index RUN` first: the bundle carries the gallery).")
def export(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    out: Annotated[Path | None, typer.Argument(help="Bundle folder or archive (.tar.gz, .tgz, .zip) to write.")] = None,
    format_: Annotated[str, typer.Option("--format", help="onnx | bundle.")] = "onnx",
    force: Annotated[bool, typer.Option("--force", help="Re-export even if up to date; replace OUT.")] = False,
) -> None:
    """Export the run's model to ONNX, or as a deployable bundle (ONNX model, prototypes, gallery, card)."""
    from herbarium2field.identify.export import FORMATS, export_bundle, export_onnx

    if format_ not in FORMATS:
        raise typer.BadParameter(f"unknown format {format_!r}; use one of {', '.join(FORMATS)}")
    if format_ == "bundle":
        if out is None:
            raise typer.BadParameter("--format bundle needs OUT, the folder or archive to write")
        b = export_bundle(run, out, force=force)
        console.print(f"bundle written to [bold]{b.path}[/bold]: {b.files} files, {b.bytes / 1e6:.1f} MB, "
                      f"in {b.seconds:.1f} s (serve it with `h2f serve {b.path}`)", highlight=False)
        return
    if out is not None:
        raise typer.BadParameter("OUT is for --format bundle; the ONNX export goes to RUN/export/")
    r = export_onnx(run, force=force)
    if r.up_to_date:
        console.print(f"[green]up to date[/green]: {r.path}")
        return
    console.print(f"exported {r.path} in {r.seconds:.1f} s; vs PyTorch: embeddings max |diff| "
                  f"{r.max_abs_diff_embeddings:.1e} (min cosine {r.min_cosine:.6f}), scores max |diff| "
                  f"{r.max_abs_diff_scores:.1e}, same top-5: {'yes' if r.same_top5 else 'NO'}", highlight=False)


@app.command(epilog="Examples:\n\n  h2f serve runs/demo_arcface\n\n"
             "  h2f serve runs/demo_arcface --port 8080 --backend onnx\n\n"
             "Open http://127.0.0.1:8000/ for the web page, /docs for the API. Listens on localhost only unless "
             "--host says otherwise.")
def serve(
    run: Annotated[Path, typer.Argument(help="Run directory with a gallery (h2f index), or a bundle.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 exposes it to the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    backend: Annotated[str, typer.Option(help="auto (onnx for a bundle) | torch | onnx (needs h2f export).")] = "auto",
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted photo, in MB.")] = 15.0,
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: all cores).")] = None,
    species: Annotated[Path | None, typer.Option(
        "--species", help="Checklist file: restrict every answer to these species (ids or names, one a line).")] = None,
) -> None:
    """Serve identification over HTTP: a web page for people and a JSON API."""
    from herbarium2field.serve.app import run_server

    run_server(run, host=host, port=port, backend=backend, max_upload_mb=max_upload_mb, threads=threads,
               checklist=species)


@app.command(epilog="Examples:\n\n"
             "  h2f embed ../shared/data/aml-sample --backbone efficientnet_lite0 --weights efficientnet_lite0:offline "
             "features/sample-lite0\n\n"
             "  h2f embed data/aml --backbone vit_base_patch14_reg4_dinov2.lvd142m --weights model_best.pth.tar "
             "--size 518 features/aml-plantclef\n\n"
             "  h2f embed data/aml --run runs/convnext_arcface features/aml-convnext\n\n"
             "Interrupted? Run the same command again: finished shards are kept. A cache made with another "
             "backbone, weights, preprocessing or image list is refused (--force rebuilds it).")
def embed(
    data: Annotated[Path, typer.Argument(help="Dataset root: PlantCLEF/AML lists, train/herbarium folders, or a CSV.")],
    out: Annotated[Path, typer.Argument(help="Cache folder to write (or to continue).")],
    backbone: Annotated[str | None, typer.Option(help="timm model name, e.g. efficientnet_lite0.")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Local weights file (state dict, timm, Lightning, PlantCLEF checkpoint) or efficientnet_lite0:offline.")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="Download timm hub weights instead.")] = False,
    random_init: Annotated[bool, typer.Option(
        "--random-init", help="Embed with a randomly initialised network (a control; never a baseline).")] = False,
    size: Annotated[int | None, typer.Option(help="Input size in px (default: the backbone's).")] = None,
    mean: Annotated[str | None, typer.Option(help="Override normalisation mean, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[str | None, typer.Option(help="Override normalisation std, e.g. 0.5,0.5,0.5.")] = None,
    run: Annotated[Path | None, typer.Option(help="Embed with a trained `h2f train` run instead.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    workers: Annotated[int, typer.Option(help="Data-loading processes.")] = 2,
    shard_size: Annotated[int, typer.Option(help="Images per shard file (the unit of resuming).")] = 1024,
    dtype: Annotated[str, typer.Option(help="Stored precision: float16 | float32.")] = "float16",
    precision: Annotated[str, typer.Option(help="Compute precision: auto (bf16 on GPU) | fp32 | bf16.")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Stop after about this many new images (re-run continues).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild a cache made differently.")] = False,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Skip unusable list entries.")] = False,
) -> None:
    """Embed every image (all splits) with a frozen network into a resumable feature cache."""
    from herbarium2field.features.extract import embed_dataset
    from herbarium2field.models.frozen import ExtractorSpec

    spec = ExtractorSpec(backbone=backbone, weights=weights, pretrained=pretrained, random_init=random_init, size=size,
                         mean=_triple(mean, "--mean"), std=_triple(std, "--std"), run=run)
    rep = embed_dataset(data, out, spec, batch_size=batch_size, num_workers=workers, shard_size=shard_size,
                        dtype=dtype, force=force, max_images=limit, precision=precision,
                        allow_missing=allow_missing, progress=True)
    ex = rep.extractor
    if ex.load_summary:
        console.print(f"weights: {ex.load_summary}", highlight=False)
    for w in ex.load_warnings:
        err_console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    console.print(f"{rep.out}: {rep.n_images} images x {rep.dim} ({ex.backbone}, {ex.pre.input_size}px); "
                  f"{rep.embedded} embedded now ({rep.images_per_s:,.1f} images/s), {rep.reused} reused",
                  highlight=False)
    if rep.failed:
        err_console.print(f"[bold red]{len(rep.failed)} image(s) could not be decoded[/bold red] and have no "
                          "embedding (left out of fitting, ranked last in evaluation):", highlight=False)
        for p in rep.failed[:20]:
            err_console.print(f"  {p}", highlight=False, markup=False)
    if not rep.complete:
        console.print("[yellow]not finished[/yellow] (--limit): run the same command again to continue.")


def _triple(text: str | None, name: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise H2FError(f"{name} needs three comma-separated numbers (R,G,B), got {text!r}")
    return vals  # type: ignore[return-value]


@app.command("fit-classic", epilog="Examples:\n\n"
             "  h2f fit-classic features/sample-lite0 --classifier logreg --out runs/lite0_logreg\n\n"
             "  h2f fit-classic features/aml-plantclef --classifier svm -o C=0.05 --align coral --out runs/pc_svm\n\n"
             "  h2f fit-classic features/aml-plantclef --classifier knn -o k=10 --domains herbarium --out runs/pc_knn\n\n"
             "Options: logreg C, class_weight, scale, max_iter; svm C, class_weight, scale, cv, max_iter; knn k.")
def fit_classic_command(
    features: Annotated[Path, typer.Argument(help="Embedding cache folder written by `h2f embed`.")],
    out: Annotated[Path, typer.Option(help="Run directory to write, e.g. runs/lite0_logreg.")],
    classifier: Annotated[str, typer.Option(help="logreg | svm | knn | ncm.")] = "logreg",
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Classifier option KEY=VALUE (repeatable), e.g. -o C=10.")] = None,
    align: Annotated[str, typer.Option(help="Domain alignment: none | standardize | coral.")] = "none",
    align_reg: Annotated[float, typer.Option(help="CORAL covariance regularisation (x mean variance).")] = 1.0,
    domains: Annotated[str, typer.Option(help="Fit on both | herbarium | field training images.")] = "both",
    val_field_fraction: Annotated[float, typer.Option(
        help="Hold out this share of training field photos and report top-1/top-5 on them.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the validation hold-out.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run directory.")] = False,
) -> None:
    """Fit a classical classifier (logreg, svm, knn, ncm) on cached frozen features; writes a run directory."""
    import time

    import yaml

    from herbarium2field.features.classic import fit_classic, save_classic

    opts = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise H2FError(f"--option needs KEY=VALUE, got {item!r}")
        opts[key.strip()] = yaml.safe_load(value)
    t0 = time.perf_counter()
    model = fit_classic(features, classifier, opts, align=align, align_reg=align_reg, domains=domains,
                        val_field_fraction=val_field_fraction, seed=seed, name=out.name)
    paths = save_classic(model, out, force=force)
    m, d = model.card.model, model.card.dataset
    console.print(f"{classifier} ({', '.join(f'{k}={v}' for k, v in m['options'].items()) or 'no options'}; "
                  f"align {align}) on {d['train_images']} training images ({d['train_herbarium']} herbarium, "
                  f"{d['train_field']} field) of {m['classes_trained']} species in {time.perf_counter() - t0:.1f} s",
                  highlight=False)
    for key in ("calibration", "warning"):
        if key in m:
            console.print(f"{key}: {m[key]}", highlight=False)
    if model.card.validation:
        v = model.card.validation
        console.print(f"validation ({v['n']} field photos): top-1 {v['val_top1']:.3f}, top-5 {v['val_top5']:.3f}")
    console.print(f"run written to [bold]{paths.root}[/bold]")


@app.command(epilog="Examples:\n\n  h2f ablate benchmarks/ablation.yaml\n\n"
             "  h2f ablate benchmarks/ablation.yaml --only synth20 --only aml_sample/arcface")
def ablate(
    plan: Annotated[Path, typer.Argument(help="Ablation plan YAML (benchmarks × variants).")],
    work: Annotated[Path, typer.Option(help="Where datasets and runs are written (re-runs skip finished cells).")]
    = Path("ablation"),
    out: Annotated[Path, typer.Option(help="Markdown table (a .json beside it).")] = Path("docs/ablation_results.md"),
    only: Annotated[list[str] | None, typer.Option(help="Benchmark, variant or bench/variant to run.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    merge: Annotated[bool, typer.Option(
        "--merge", help="Keep the cells already in OUT's JSON that this run does not measure.")] = False,
) -> None:
    """Train + evaluate every ingredient on/off on every benchmark; one table with CIs and training cost."""
    from herbarium2field.experiments.ablation import run_plan, write_results
    from herbarium2field.experiments.plan import load_plan

    p = load_plan(plan)
    rows = run_plan(p, work, only=only, n_boot=n_boot, log=console.print)
    console.print(f"wrote [bold]{write_results(rows, p, out, work=work, n_boot=n_boot, merge=merge)}[/bold]")


if __name__ == "__main__":
    main()
