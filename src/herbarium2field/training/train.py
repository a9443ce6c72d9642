"""``h2f train``: config → data → model → Lightning Trainer → a self-describing run directory."""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from herbarium2field.config import ExperimentConfig, load_config, save_config
from herbarium2field.data.datamodule import H2FDataModule
from herbarium2field.data.manifest import read_dataset
from herbarium2field.data.taxonomy_file import dataset_families
from herbarium2field.errors import H2FError
from herbarium2field.io import write_json
from herbarium2field.models.backbones import preprocessing_for
from herbarium2field.models.lightning import H2FLightningModule
from herbarium2field.paths import runs_dir
from herbarium2field.run.artefacts import Split
from herbarium2field.run.card import ModelCard, environment
from herbarium2field.run.finalize import finalize_run, stamp_card
from herbarium2field.run.load import load_model
from herbarium2field.run.paths import RunPaths
from herbarium2field.scoring.taxonomy import Taxonomy
from herbarium2field.training.callbacks import (
    AtomicCheckpointIO,
    BackboneWarmup,
    EpochCSV,
    EpochLog,
    ImagesPerSecondBar,
    ResumableEarlyStopping,
    StepSeed,
    Throughput,
)


def resolve_run(cfg: ExperimentConfig, *, resume: Path | None, runs_root: Path | None = None
                ) -> tuple[ExperimentConfig, RunPaths, Path | None]:
    """Decide the run directory and checkpoint to resume from; never overwrite a finished run.

    ``--resume`` continues from ``checkpoints/last.ckpt`` (the last completed epoch); a run killed before its
    first checkpoint starts again in its own directory, with its saved config.
    """
    if resume is not None:
        paths = RunPaths(Path(resume))
        if not paths.config.is_file():
            raise H2FError("cannot resume: not a run directory (config.yaml missing)", path=paths.root)
        if rank_zero_only.rank == 0 and paths.checkpoints.is_dir():
            for tmp in paths.checkpoints.glob(".*.tmp"):  # a checkpoint being written when the run was killed
                tmp.unlink(missing_ok=True)
        if not paths.last.is_file():
            if rank_zero_only.rank == 0:
                print(f"{paths.root}: no checkpoint yet (killed during its first epoch); starting it again")
            return load_config(paths.config), paths, None
        return load_config(paths.config), paths, paths.last
    paths = RunPaths((runs_root or runs_dir()) / cfg.name)
    if rank_zero_only.rank == 0 and paths.checkpoints.exists() and any(paths.checkpoints.iterdir()):
        raise H2FError("run directory already holds checkpoints", path=paths.root,
                       hint=f"continue it with --resume {paths.root}, or pick another --name")
    return cfg, paths, None


def train(cfg: ExperimentConfig, *, resume: Path | None = None, progress: bool = True,
          runs_root: Path | None = None) -> RunPaths:
    """Train one experiment end to end and return its run directory (``runs_root/<name>``, default ``runs/``)."""
    cfg, paths, ckpt = resolve_run(cfg, resume=resume, runs_root=runs_root)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ds = read_dataset(cfg.data.root, check="exists", allow_missing=cfg.data.allow_missing)
    if len(ds.split("train")) == 0:
        raise H2FError("the dataset has no training images", path=ds.root)

    dm = H2FDataModule(cfg, ds)
    module = H2FLightningModule(cfg, len(ds.species), class_counts=dm.class_counts(),
                                with_pairs=np.array([c in ds.with_pairs for c in ds.class_ids]),
                                genus_of_class=Taxonomy.from_species([ds.species[c] for c in ds.class_ids])
                                .genus_of_class)
    pre = preprocessing_for(module.net.backbone, weights=cfg.model.weights, image_size=cfg.data.image_size)
    pre.grey = cfg.data.grey
    dm.set_preprocessing(pre)
    if module.net.load_report is not None and rank_zero_only.rank == 0:
        print(module.net.load_report.summary())

    if rank_zero_only.rank == 0:
        paths.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, paths.config)
        write_json(paths.environment, environment())
        _write_card(paths, cfg, ds, dm, pre, module, best=None)

    trainer = _trainer(cfg, paths, has_val=len(dm.val_table) > 0, progress=progress)
    if cfg.trainer.compile:
        module.net = torch.compile(module.net)  # type: ignore[assignment]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # small datasets
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs newer torch, harmless
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)

    if trainer.is_global_zero:
        ckpt_cb = trainer.checkpoint_callback
        best_path = Path(ckpt_cb.best_model_path) if ckpt_cb and ckpt_cb.best_model_path else paths.last
        if best_path.resolve() != paths.best.resolve() and best_path.is_file():
            shutil.copyfile(best_path, paths.best)
        score = ckpt_cb.best_model_score if ckpt_cb else None
        card = _write_card(paths, cfg, ds, dm, pre, module,
                           best={"monitor": cfg.train.early_stopping.monitor,
                                 "score": float(score) if score is not None else None,
                                 "epochs_run": trainer.current_epoch})
        _finalize(paths, cfg, dm, stamp_card(paths.root, card, paths.best), progress=progress)
    return paths


def _finalize(paths: RunPaths, cfg: ExperimentConfig, dm: H2FDataModule, card: ModelCard, *, progress: bool) -> None:
    """Write what inference needs into the run (prototypes, validation outputs, inference choice, threshold)."""
    d = cfg.data
    split = Split(d.val_field_fraction, d.val_herbarium_fraction, cfg.seed if d.val_seed is None else d.val_seed,
                  dm.val_table.path.astype(str).tolist())
    model = load_model(paths.root, "torch", card=card, require_choice=False)
    finalize_run(model, split, dm.train_table, dm.val_table, dm.source, declared=cfg.inference,
                 scale=cfg.model.arcface.scale, batch_size=d.eval_batch_size or d.batch_size,
                 num_workers=d.num_workers, progress=progress and sys.stdout.isatty())


class _NoAdverts(logging.Filter):
    """Drop Lightning's product tips from our logs (keep its device and stopping messages)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


def _trainer(cfg: ExperimentConfig, paths: RunPaths, *, has_val: bool, progress: bool) -> L.Trainer:
    t = cfg.trainer
    throughput = Throughput()
    monitor = cfg.train.early_stopping.monitor if has_val else None
    # Checkpoints are written at the end of the training epoch, after validation, early stopping and the CSV
    # row, so last.ckpt always holds a completed epoch with the sampler, schedule and step counter past it.
    # best.ckpt and last.ckpt come from two callbacks: Lightning (>= 2.5) refreshes save_last only in
    # epochs where the monitored checkpoint was saved, which left last.ckpt at the best epoch and made
    # --resume repeat every epoch after it.
    ckpt = {"dirpath": paths.checkpoints, "save_on_train_epoch_end": True, "enable_version_counter": False,
            "auto_insert_metric_name": False}
    callbacks: list = [
        throughput,
        StepSeed(cfg.seed),
        BackboneWarmup(cfg.train.warmup_epochs),
        EpochCSV(paths.metrics, cfg.train.warmup_epochs, throughput),
    ]
    if has_val and cfg.train.early_stopping.patience is not None:
        callbacks.append(ResumableEarlyStopping(monitor=monitor, mode=cfg.train.early_stopping.mode,
                                                patience=cfg.train.early_stopping.patience,
                                                check_on_train_epoch_end=False))
    # trainer.checkpoint_callback (the first) is the best one; the last one is saved after it, so its
    # state in last.ckpt already counts this epoch.
    callbacks.append(ModelCheckpoint(filename="best", monitor=monitor, mode=cfg.train.early_stopping.mode,
                                     save_top_k=1, save_last=monitor is None, **ckpt))
    if monitor is not None:
        callbacks.append(ModelCheckpoint(filename="last", monitor=None, save_top_k=1, **ckpt))
    if progress and sys.stdout.isatty():
        callbacks.append(ImagesPerSecondBar(throughput))
    elif progress:  # a log file or pipe: one line per epoch instead of a redrawn bar
        callbacks.append(EpochLog(cfg.train.epochs, cfg.train.warmup_epochs, throughput))
    progress = progress and sys.stdout.isatty()
    extra = {}
    if t.limit_train_batches is not None:
        extra["limit_train_batches"] = t.limit_train_batches
    if t.limit_val_batches is not None:
        extra["limit_val_batches"] = t.limit_val_batches
    strategy = t.strategy
    if strategy == "ddp" and cfg.train.warmup_epochs > 0:
        # DDP wraps the model once, while the backbone still requires gradients; during the frozen warm-up it
        # produces none, which plain DDP treats as an error. Finding unused parameters costs one graph walk a step.
        strategy = "ddp_find_unused_parameters_true"
    return L.Trainer(
        default_root_dir=paths.root,
        max_epochs=cfg.train.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,  # type: ignore[arg-type]
        deterministic=t.deterministic,
        gradient_clip_val=cfg.train.grad_clip,
        log_every_n_steps=t.log_every_n_steps,
        logger=TensorBoardLogger(paths.root, name="tb", version="", default_hp_metric=False),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        use_distributed_sampler=False,  # our BalancedSampler is rank-aware
        num_sanity_val_steps=0,
        **extra,
    )


def _write_card(paths: RunPaths, cfg: ExperimentConfig, ds, dm: H2FDataModule, pre, module: H2FLightningModule,  # type: ignore[no-untyped-def]
                best: dict | None) -> ModelCard:
    m = cfg.model
    report = module.net.load_report
    card = ModelCard(
        name=cfg.name,
        kind="network",
        class_ids=ds.class_ids,
        species=[ds.species[c] for c in ds.class_ids],
        with_pairs=sorted(ds.with_pairs),
        preprocessing=pre.to_dict(),
        model={"backbone": m.backbone, "head": m.head, "pool": m.pool, "embedding_dim": module.net.embedding_dim,
               "arcface": m.arcface.model_dump() if m.head == "arcface" else None,
               "weights": m.weights or ("timm hub" if m.pretrained else "random init"),
               "weights_sha256": report.sha256 if report else None},
        dataset={"root": str(Path(cfg.data.root).resolve()), "root_as_given": cfg.data.root, "layout": ds.layout,
                 "train_images": len(dm.train_table), "val_images": len(dm.val_table),
                 "test_images": len(ds.split("test"))},
        embedding_dim=module.net.embedding_dim,
        validation=best or {},
        families=dataset_families(cfg.data.root),
    )
    card.save(paths.card)
    return card


def config_from_cli(config: str | Path | None, *, data: str | None, name: str | None, overrides: list[str],
                    resume: Path | None) -> ExperimentConfig:
    """The experiment config of a ``h2f train`` call: the file (``--data``/``--name`` win over it), or the
    resumed run's own saved config."""
    sets = list(overrides)
    if data is not None:
        sets.append(f"data.root={data}")
    if name is not None:
        sets.append(f"name={name}")
    if resume is not None:
        if config is not None or sets:
            raise H2FError("--resume continues a run with its own saved config; drop CONFIG/--data/--name/--set")
        return load_config(RunPaths(Path(resume)).config)
    return load_config(config, sets)  # no CONFIG: the defaults of herbarium2field.config
