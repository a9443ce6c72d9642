"""The ablation plan (``benchmarks/ablation.yaml``): benchmarks, variants and the verdict rule, read and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from herbarium2field.errors import ConfigError

KINDS = ("synth", "dataset", "drop_pairs", "lso")


@dataclass
class Benchmark:
    name: str
    kind: str  # "synth" | "dataset" | "drop_pairs" | "lso" (leave-species-out on a dataset)
    config: str  # base experiment config (relative to the plan file)
    params: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    description: str = ""
    variants: list[str] | None = None  # run only these variants here (a costly benchmark); None: all
    requires: str | None = None  # "gpu": skipped (and listed as not run) where no CUDA device is present


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    mode: str = "classifier"  # or "prototype-<source>"
    description: str = ""
    reuse: str | None = None  # evaluate another variant's run (an evaluation-only ingredient)
    inference: dict[str, Any] = field(default_factory=dict)  # evaluated with: reserve, genus_insert, branch


@dataclass
class Verdict:
    """Which variant must beat which, by a paired-bootstrap interval that excludes zero."""

    candidate: str = "recommended"
    baselines: list[str] = field(default_factory=lambda: ["softmax", "arcface"])
    repeats: list[str] = field(default_factory=list)  # the same recipe at other training seeds: the noise


@dataclass
class Recommend:
    """Where the written rule (``experiments.recommend``) picks the recommended recipe."""

    benchmark: str
    baselines: list[str] = field(default_factory=lambda: ["softmax", "arcface", "frozen_logreg"])
    synthetic: list[str] = field(default_factory=list)


@dataclass
class Plan:
    path: Path
    benchmarks: list[Benchmark]
    variants: list[Variant]
    verdict: Verdict | None = None
    recommend: Recommend | None = None


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("ablation plan not found", path=path)
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        benches = [Benchmark(name=k, **v) for k, v in raw["benchmarks"].items()]
        variants = [Variant(name=k, **(v or {})) for k, v in raw["variants"].items()]
        verdict = Verdict(**raw["verdict"]) if raw.get("verdict") else None
        recommend = Recommend(**raw["recommend"]) if raw.get("recommend") else None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"a plan needs 'benchmarks' and 'variants' mappings ({exc})", path=path) from None
    names = {v.name for v in variants}
    if verdict:
        unknown = sorted({verdict.candidate, *verdict.baselines, *verdict.repeats} - names)
        if unknown:
            raise ConfigError(f"verdict names unknown variants: {', '.join(unknown)}", path=path)
    if recommend:
        bench_names = {b.name for b in benches}
        unknown = sorted(({recommend.benchmark, *recommend.synthetic} - bench_names)
                         | (set(recommend.baselines) - names))
        if unknown:
            raise ConfigError(f"recommend names unknown benchmarks or variants: {', '.join(unknown)}", path=path)
    for b in benches:
        unknown = sorted(set(b.variants or []) - names)
        if unknown:
            raise ConfigError(f"benchmark {b.name} lists unknown variants: {', '.join(unknown)}", path=path)
        if b.requires not in (None, "gpu"):
            raise ConfigError(f"benchmark {b.name}: requires must be 'gpu' or absent", path=path)
        if b.kind not in KINDS:
            raise ConfigError(f"benchmark {b.name}: kind must be one of {', '.join(KINDS)}", path=path)
    return Plan(path, benches, variants, verdict, recommend)
