"""What a synthetic dataset contains, decided before any pixel is drawn.

The plan fixes species, per-class image counts (long-tailed), which species have field photos in
training ("with pairs"), every image's id and path, and the seed of every image's random stream, so
that rendering can run in any order, in any number of processes, and give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from herbarium2field.data.synth.morphology import Species, flora
from herbarium2field.errors import ConfigError

PLAN_STREAM = 7003
IMAGE_STREAM = 7004
DOMAIN_CODE = {"herbarium": 0, "field": 1, "test": 2}  # test images are field photos with their own stream


@dataclass(frozen=True)
class SynthOptions:
    """Options of ``h2f synth`` (see :func:`~herbarium2field.data.synth.generate.generate_dataset`)."""

    species: int = 20
    min_images: int = 8
    max_images: int = 40
    field_fraction: float = 0.35
    without_pairs: float = 0.4
    test_per_species: int = 3
    size: int = 256
    imbalance: float = 1.0
    seed: int = 0
    genus_size: int = 1  # species per genus (1: every species its own genus, the original flora)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the option that is out of range."""
        checks = [
            (self.species >= 1, "--species must be at least 1", self.species),
            (
                self.min_images >= 2,
                "--min-images must be at least 2 (a herbarium sheet and a field photo)",
                self.min_images,
            ),
            (
                self.max_images >= self.min_images,
                f"--max-images must be at least --min-images ({self.min_images})",
                self.max_images,
            ),
            (
                0.0 < self.field_fraction < 1.0,
                "--field-fraction must be between 0 and 1 (exclusive)",
                self.field_fraction,
            ),
            (0.0 <= self.without_pairs <= 1.0, "--without-pairs must be between 0 and 1", self.without_pairs),
            (self.test_per_species >= 1, "--test-per-species must be at least 1", self.test_per_species),
            (32 <= self.size <= 2048, "--size must be between 32 and 2048 px", self.size),
            (self.imbalance >= 0.0, "--imbalance must be 0 (balanced) or more", self.imbalance),
            (self.seed >= 0, "--seed must be 0 or more", self.seed),
            (self.genus_size >= 1, "--genus-size must be at least 1", self.genus_size),
        ]
        for ok, message, value in checks:
            if not ok:
                raise ConfigError(f"{message}, got {value}", hint="see `h2f synth --help`")

    def as_dict(self) -> dict[str, int | float]:
        d = asdict(self)
        if d["genus_size"] == 1:  # the original flora: its records stay as they were
            del d["genus_size"]
        return d


@dataclass(frozen=True)
class ImageJob:
    """One image to render: where it goes, of which species, and the key of its random stream."""

    relpath: str  # e.g. "train/herbarium/123456/654321.jpg"
    species_index: int
    class_id: int
    domain: str  # herbarium | field | test
    index: int  # n-th image of this species and domain

    def rng_key(self, seed: int) -> list[int]:
        return [seed, IMAGE_STREAM, self.class_id, DOMAIN_CODE[self.domain], self.index]


@dataclass
class Plan:
    options: SynthOptions
    species: list[Species]
    with_pairs: list[int]  # class ids with field photos in training
    jobs: list[ImageJob]

    @property
    def without_pairs(self) -> list[int]:
        paired = set(self.with_pairs)
        return sorted(sp.class_id for sp in self.species if sp.class_id not in paired)


def long_tail_counts(n: int, lo: int, hi: int, imbalance: float) -> list[int]:
    """Images per class by rank: ``hi * rank**-a`` floored at ``lo`` (a power law, as in the real data).

    ``a = imbalance * ln(hi / lo) / ln(n)``: ``imbalance=1`` runs from ``hi`` for the commonest class to
    exactly ``lo`` for the rarest, 0 makes every class ``hi``, above 1 puts more classes at ``lo``.
    """
    if n == 1 or hi == lo:
        return [hi] * n
    a = imbalance * math.log(hi / lo) / math.log(n)
    return [max(lo, min(hi, round(hi * rank**-a))) for rank in range(1, n + 1)]


def make_plan(options: SynthOptions) -> Plan:
    """Species, counts, pairs, ids and paths of the dataset described by ``options``."""
    options.validate()
    rng = np.random.default_rng([options.seed, PLAN_STREAM])
    species = flora(options.seed, options.species, genus_size=options.genus_size)
    counts = long_tail_counts(options.species, options.min_images, options.max_images, options.imbalance)
    counts = [counts[r] for r in rng.permutation(options.species)]  # which species is common is random
    n_without = round(options.without_pairs * options.species)
    without = set(rng.choice(options.species, size=n_without, replace=False).tolist())

    todo: list[tuple[int, str, int]] = []  # (species index, domain, index)
    for k, n in enumerate(counts):
        n_field = 0 if k in without else min(n - 1, max(1, round(options.field_fraction * n)))
        todo += [(k, "field", i) for i in range(n_field)]
        todo += [(k, "herbarium", i) for i in range(n - n_field)]
    todo += [(k, "test", i) for k in range(options.species) for i in range(options.test_per_species)]

    span = max(900_000, 10 * len(todo))  # 6-digit ids like PlantCLEF's, more digits only for huge sets
    ids = (rng.choice(span, size=len(todo), replace=False) + 100_000).tolist()
    jobs = []
    for (k, domain, i), image_id in zip(todo, ids, strict=True):
        cid = species[k].class_id
        folder = {"herbarium": f"train/herbarium/{cid}", "field": f"train/photo/{cid}", "test": "test"}[
            domain
        ]
        jobs.append(ImageJob(f"{folder}/{image_id}.jpg", k, cid, domain, i))
    with_pairs = sorted(species[k].class_id for k in range(options.species) if k not in without)
    return Plan(options, species, with_pairs, jobs)


def list_files(plan: Plan) -> dict[str, str]:
    """Contents of the ``list/`` files (AML/PlantCLEF layout), ``\\n`` line endings, sorted by class id."""
    by_class = sorted(plan.jobs, key=lambda j: (j.class_id, j.domain != "field"))
    train = [f"{j.relpath} {j.class_id}\n" for j in by_class if j.domain != "test"]
    tests = [j for j in plan.jobs if j.domain == "test"]
    order = np.random.default_rng([plan.options.seed, PLAN_STREAM, 1]).permutation(len(tests))
    tests = [tests[i] for i in order]  # test photos come unsorted, as in PlantCLEF
    return {
        "train.txt": "".join(train),
        "test.txt": "".join(f"{j.relpath}\n" for j in tests),
        "groundtruth.txt": "".join(f"{j.relpath} {j.class_id}\n" for j in tests),
        "species_list.txt": "".join(
            f"{sp.class_id}; {sp.name}\n" for sp in sorted(plan.species, key=lambda s: s.class_id)
        ),
        "class_with_pairs.txt": "".join(f"{c}\n" for c in plan.with_pairs),
        "class_without_pairs.txt": "".join(f"{c}\n" for c in plan.without_pairs),
    }
