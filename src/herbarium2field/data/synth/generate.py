"""Write a synthetic two-domain dataset (``h2f synth``) in the AML/PlantCLEF list layout.

Safe to interrupt and to re-run: a marker file is written first (so the folder is recognisably ours),
every image atomically, the list files last; re-running into a previous synth folder replaces its
images. A folder with anything else in it is refused: we never delete or mix with user data.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from herbarium2field.data.synth.field import render_field
from herbarium2field.data.synth.herbarium import render_herbarium
from herbarium2field.data.synth.morphology import Species
from herbarium2field.data.synth.plan import ImageJob, Plan, SynthOptions, list_files, make_plan
from herbarium2field.errors import H2FError
from herbarium2field.io import atomic_path
from herbarium2field.progress import track_images

MARKER = ".h2f-synth.json"
JPEG_QUALITY = 90
LIST_FILES = (
    "train.txt",
    "test.txt",
    "groundtruth.txt",
    "species_list.txt",
    "class_with_pairs.txt",
    "class_without_pairs.txt",
)
CONTACT_SHEET = "contact_sheet.png"


@dataclass(frozen=True)
class SynthSummary:
    """What was written, for the CLI summary and for tests."""

    root: Path
    species: int
    with_pairs: int
    without_pairs: int
    herbarium: int  # training herbarium sheets
    field: int  # training field photos
    test: int  # test field photos
    min_per_class: int  # training images of the rarest class
    max_per_class: int
    seconds: float
    workers: int

    @property
    def images(self) -> int:
        return self.herbarium + self.field + self.test

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["root"] = str(self.root)
        d["images"], d["images_per_second"] = self.images, round(self.images_per_second, 1)
        return d


def render(job: ImageJob, sp: Species, seed: int, size: int) -> Image.Image:
    """The image of one job; depends only on (seed, class, domain, index, size), not on process or order."""
    rng = np.random.default_rng(job.rng_key(seed))
    if job.domain == "herbarium":
        return render_herbarium(sp, rng, size)
    return render_field(sp, rng, size)


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and ``os.replace`` it: never a half file (no
    fsync: a synthetic image lost in a crash is simply rendered again)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _encode(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _work(task: tuple[Path, ImageJob, Species, int, int]) -> str:
    root, job, sp, seed, size = task
    path = root / job.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, _encode(render(job, sp, seed, size)))
    return job.domain


def _is_ours(name: str, rel: Path) -> bool:
    """Could ``rel`` (relative to the root) have been written by a previous run of ``h2f synth``?"""
    parts = rel.parts
    if name.startswith(".") and ".tmp" in name:  # left by an interrupted atomic write
        return True
    if len(parts) == 4 and parts[0] == "train" and parts[1] in ("herbarium", "photo"):
        return name.endswith(".jpg")
    if len(parts) == 2 and parts[0] == "test":
        return name.endswith(".jpg")
    if len(parts) == 2 and parts[0] == "list":
        return name in LIST_FILES
    return len(parts) == 1 and name in (MARKER, CONTACT_SHEET)


def prepare_folder(out: Path) -> None:
    """Create ``out``, or clear a previous synth output in it; refuse a non-empty folder that is not ours.

    Only files that a previous run could have written are removed (plus the resized-image cache
    ``.h2f-cache`` that was made from them); anything else is left where it is.
    """
    if out.exists() and not out.is_dir():
        raise H2FError(
            "is a file, not a folder", path=out, hint="choose a new or empty folder for the dataset"
        )
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise H2FError(
                "folder is not empty and was not made by `h2f synth`; refusing to write into it",
                path=out,
                hint="choose a new or empty folder, or remove this one yourself",
            )
        cache = out / ".h2f-cache"
        if cache.is_dir():
            shutil.rmtree(cache)
        for dirpath, _, filenames in os.walk(out, topdown=False):
            here = Path(dirpath)
            for name in filenames:
                if _is_ours(name, (here / name).relative_to(out)):
                    (here / name).unlink()
            if here != out and not any(here.iterdir()):
                here.rmdir()
    out.mkdir(parents=True, exist_ok=True)


def _write_marker(out: Path, options: SynthOptions, summary: SynthSummary | None) -> None:
    """The folder's identity card; no timings in it, so that the whole folder is reproducible."""
    counts = None
    if summary is not None:
        keep = (
            "species",
            "with_pairs",
            "without_pairs",
            "herbarium",
            "field",
            "test",
            "min_per_class",
            "max_per_class",
        )
        counts = {k: v for k, v in summary.as_dict().items() if k in keep}
    marker = {
        "generator": "h2f synth",
        "format": 1,
        "complete": summary is not None,
        "options": options.as_dict(),
        "counts": counts,
    }
    write_atomic(out / MARKER, (json.dumps(marker, indent=2) + "\n").encode())


def _run(tasks: list[tuple[Path, ImageJob, Species, int, int]], workers: int) -> Iterator[str]:
    if workers <= 1:
        yield from map(_work, tasks)
        return
    # spawn: safe in processes that already run threads (torch, servers); workers only need numpy + PIL.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(_work, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 8))))


def generate_dataset(
    out: Path,
    *,
    species: int = 20,
    min_images: int = 8,
    max_images: int = 40,
    field_fraction: float = 0.35,
    without_pairs: float = 0.4,
    test_per_species: int = 3,
    size: int = 256,
    imbalance: float = 1.0,
    seed: int = 0,
    genus_size: int = 1,
    workers: int = 1,
    progress: bool = False,
) -> SynthSummary:
    """Render a synthetic herbarium->field dataset into ``out`` and return what was written.

    - ``species``: number of species (classes); species ``k`` is the same for every count ``>= k``.
    - ``min_images``/``max_images``: training images per class; counts follow a power law from the max
      down to the min (see :func:`~.plan.long_tail_counts`, ``imbalance`` its steepness: 0 = balanced).
    - ``field_fraction``: share of field photos among the training images of each species *with pairs*
      (0.35 with 40 % without pairs gives ~21 % field photos overall, as the real subset's 22 %).
    - ``without_pairs``: share of species with herbarium sheets only in training.
    - ``test_per_species``: test field photos per species (every species, with or without pairs).
    - ``size``: short side of the written JPEGs in px (sheets are portrait ~0.7, photos landscape/square).
    - ``seed``: same seed and options give byte-identical files, whatever ``workers``.
    - ``genus_size``: species per genus (congeners share a genus name and a look); 1 = every species alone.
    - ``workers``: processes (0 = all cores); ``progress`` shows a Rich progress bar. Workers are
      *spawned* (safe beside torch threads), so a script that asks for ``workers > 1`` must call this
      under ``if __name__ == "__main__":``.
    """
    options = SynthOptions(
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
    )
    if workers < 0:
        raise H2FError(
            f"--workers must be 0 (all cores) or more (got {workers})", hint="see `h2f synth --help`"
        )
    workers = workers or os.cpu_count() or 1
    plan: Plan = make_plan(options)
    out = Path(out)
    prepare_folder(out)
    _write_marker(out, options, None)
    start = time.perf_counter()
    tasks = [(out, job, plan.species[job.species_index], seed, size) for job in plan.jobs]
    done = _run(tasks, workers)
    if progress:
        done = track_images(done, len(tasks), "rendering", transient=True)
    counts = {"herbarium": 0, "field": 0, "test": 0}
    for domain in done:
        counts[domain] += 1
    seconds = time.perf_counter() - start

    (out / "list").mkdir(exist_ok=True)
    for name, text in list_files(plan).items():
        write_atomic(out / "list" / name, text.encode())
    per_class: dict[int, int] = {}
    for job in plan.jobs:
        if job.domain != "test":
            per_class[job.class_id] = per_class.get(job.class_id, 0) + 1
    summary = SynthSummary(
        root=out,
        species=species,
        with_pairs=len(plan.with_pairs),
        without_pairs=len(plan.without_pairs),
        herbarium=counts["herbarium"],
        field=counts["field"],
        test=counts["test"],
        min_per_class=min(per_class.values()),
        max_per_class=max(per_class.values()),
        seconds=seconds,
        workers=workers,
    )
    _write_marker(out, options, summary)
    return summary
