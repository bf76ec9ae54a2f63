"""`lightning-tricks train`: build data, model, callbacks, loggers and Trainer from the Hydra config; fit; evaluate."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightning_tricks.callbacks.full_dataset_loss import FullDatasetLoss
from lightning_tricks.callbacks.interrupt_checkpoint import SIGNALS, InterruptCheckpoint, TrainingInterrupted
from lightning_tricks.commands.console import quiet_unless_verbose
from lightning_tricks.commands.run_log import logs_terminal
from lightning_tricks.commands.run_report import RunRecord, write_run_report
from lightning_tricks.commands.summary import RunSummary
from lightning_tricks.commands.usage_errors import exits_on_usage_error
from lightning_tricks.commands.wandb_runs import declare_wandb_metrics, name_wandb_runs
from lightning_tricks.functional.seed import check_seed
from lightning_tricks.utilities.arguments import UsageError

log = logging.getLogger(__name__)


def instantiate_group(cfg: Mapping[str, Any] | None, kind: str) -> list[Any]:
    """Instantiate every entry with a ``_target_`` under a config node (``callbacks``, ``logger``)."""
    if not cfg:
        return []
    if "_target_" in cfg:
        return [instantiate(cfg, _convert_="all")]
    objects = []
    for name, node in cfg.items():
        if node is None:  # `callbacks.x=null` switches a callback off
            continue
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise ValueError(f"`{kind}.{name}` must be a config with a `_target_`, got {node!r}.")
        objects.append(instantiate(node, _convert_="all"))
    return objects


def check_run_config(cfg: DictConfig) -> None:
    """Fail on bad top-level values before anything is built or trained."""
    check_seed(cfg.seed, "seed")
    eval_ckpt = cfg.get("eval_ckpt")
    if eval_ckpt not in (None, "best", "last") and not Path(str(eval_ckpt)).is_file():
        raise UsageError(f"`eval_ckpt` must be 'best', 'last', null or an existing checkpoint file, got {eval_ckpt!r}.")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not Path(str(ckpt_path)).is_file():
        raise UsageError(f"`ckpt_path` must be an existing checkpoint file to resume from, got {ckpt_path!r}.")
    if ckpt_path is not None and HydraConfig.initialized():
        run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
        if run_dir in Path(str(ckpt_path)).resolve().parents:
            # A resume continues its own run folder: its checkpoint folder is meant to hold files.
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def build_data_and_model(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """Seed, then build the data module and the model (whose initial weights depend on the seed)."""
    check_run_config(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # `_convert_="all"`: plain lists and dicts, not OmegaConf containers, reach the constructors, so
    # hyper-parameters saved in checkpoints load with torch.load(weights_only=True).
    datamodule = instantiate(cfg.data, _convert_="all")
    # Runtime facts about the data are passed at the call site, not duplicated in the model's config.
    model = instantiate(
        cfg.model,
        input_shape=datamodule.input_shape,
        num_outputs=datamodule.num_outputs,
        task=datamodule.task,
        _convert_="all",
    )
    return datamodule, model


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, pl.Trainer]:
    """The objects of a run, built in seed order: everything that draws random numbers comes after seeding."""
    datamodule, model = build_data_and_model(cfg)
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"), "callbacks")
    # What the run's report.html shows beyond the summary: metrics per epoch, images, log records.
    callbacks.append(RunRecord())
    if not any(isinstance(c, InterruptCheckpoint) for c in callbacks):
        # Ctrl-C / SIGTERM while training: a checkpoint of where the run is, then exit 130 / 143 (see `main`).
        # Last, so the checkpoint holds what the other callbacks did with the step.
        callbacks.append(InterruptCheckpoint(dirpath=Path(str(cfg.paths.output_dir)) / "checkpoints"))
    loggers: list[Logger] = instantiate_group(cfg.get("logger"), "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
    return datamodule, model, trainer


def _eval_ckpt(requested: str | None, checkpoints: tuple[str | None, str | None]) -> str | None:
    """The file `eval_ckpt` names: "best" and "last" are the files the summary names (None where there is
    none: the weights in memory are evaluated). A path, not Lightning's "best", which warns with two
    ModelCheckpoints and takes the first one's best, whatever it monitors."""
    best, last = checkpoints
    return {"best": best, "last": last}.get(requested, requested) if requested else None


def exact_evaluation(trainer: pl.Trainer, model: pl.LightningModule, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The loss and accuracy of each split in ``metrics``, with every sample counted once.

    Under DDP, Lightning's `validate`/`test` pad each rank's shard to equal length (some samples count
    twice), so the numbers they return are not the split's mean. The weights evaluated are in ``model``
    (the last `validate`/`test` loaded the checkpoint); this is one more pass over each split, on
    disjoint shards, summed across ranks (as :class:`FullDatasetLoss` does).
    """
    exact: dict[str, float] = {}
    for split in ("val", "test"):
        if f"{split}/loss" not in metrics:
            continue
        result = FullDatasetLoss(splits=[split]).evaluate(trainer, model, split)
        if result is None:
            continue
        loss, accuracy, count = result
        exact[f"{split}/loss"] = loss
        if accuracy is not None and f"{split}/acc" in metrics:
            exact[f"{split}/acc"] = accuracy
        if trainer.is_global_zero:
            log.info(
                "DDP: %s/loss %.4f over all %d samples, each once (Lightning's padded evaluation: %.4f)",
                split,
                loss,
                count,
                float(metrics[f"{split}/loss"]),
            )
    return exact


def train(cfg: DictConfig) -> RunSummary:
    """Fit the configured model, then evaluate it on val (and test); return the run's summary."""
    datamodule, model, trainer = build(cfg)
    declare_wandb_metrics(trainer.loggers)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    checkpoints: tuple[str | None, str | None] | None = None
    record = next(c for c in trainer.callbacks if isinstance(c, RunRecord))
    try:
        with record.watching():
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
            # Read now: validate()/test() restore callback state from the evaluated checkpoint.
            checkpoints = RunSummary.checkpoints_of(trainer)
            ckpt = _eval_ckpt(cfg.get("eval_ckpt"), checkpoints)
            metrics: dict[str, float] = {}
            for result in trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False):
                metrics.update(result)
            if cfg.get("test", True):
                for result in trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False):
                    metrics.update(result)
            if trainer.world_size > 1:
                metrics.update(exact_evaluation(trainer, model, metrics))
        evaluated = cfg.get("eval_ckpt") if ckpt else None
        summary = RunSummary.from_trainer(trainer, metrics, evaluated=evaluated, checkpoints=checkpoints)
        _write_report(cfg, trainer, record, summary, summary.last_checkpoint)
        return summary
    except TrainingInterrupted as stop:
        # The summary so far: the metrics of the last validation, the files written until now.
        so_far = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "test/"))}
        stop.summary = RunSummary.from_trainer(
            trainer, so_far, evaluated="the last validation", checkpoints=checkpoints, status="interrupted"
        )
        _write_report(cfg, trainer, record, stop.summary, stop.checkpoint)
        raise
    finally:
        # Hydra multirun runs jobs in one process: close this job's W&B run so the next gets its own.
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                logger.experiment.finish()


def _write_report(
    cfg: DictConfig, trainer: pl.Trainer, record: RunRecord, summary: RunSummary, checkpoint: str | None
) -> None:
    """Rank zero: write report.html with the command that continues the run from ``checkpoint``; name it in
    the summary. The command only where this process is the run's own ``train`` (a tune trial is not)."""
    if not trainer.is_global_zero:
        return
    own_run = HydraConfig.initialized() and (
        Path(HydraConfig.get().runtime.output_dir).resolve() == Path(str(cfg.paths.output_dir)).resolve()
    )
    resume = resume_command(checkpoint) if checkpoint and own_run else None
    try:
        summary.report = str(write_run_report(trainer, record, summary, resume=resume))
    except Exception as error:  # the page is a view of the run: it must not cost the run its summary or exit code
        log.warning("report.html not written: %s: %s", type(error).__name__, error)


def resume_command(checkpoint: str) -> str:
    """The command line that resumes this run from ``checkpoint``.

    ``ckpt_path=`` alone where the run folder holds its config (a resume reloads it, see
    :mod:`lightning_tricks.commands.resume`); else the same config options and overrides as this run's.
    """
    hydra_cfg = HydraConfig.get()
    words = ["lightning-tricks", "train"]
    if not (Path(hydra_cfg.runtime.output_dir) / ".hydra" / "config.yaml").is_file():
        for source in hydra_cfg.runtime.config_sources:
            if source.provider == "command-line" and source.schema == "file":
                words += ["--config-dir", source.path]
        if hydra_cfg.job.config_name != "train":
            words += ["--config-name", hydra_cfg.job.config_name]
        words += [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") != "ckpt_path"]
    words.append(f"ckpt_path={checkpoint}")
    return " ".join(shlex.quote(w) for w in words)


@contextlib.contextmanager
def interrupts_stop_at_once() -> Iterator[None]:
    """SIGINT/SIGTERM outside the training steps (building, checks, evaluation) stop the command at once with
    exit code 130/143; during the steps InterruptCheckpoint takes them over to save a checkpoint first."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise TrainingInterrupted(signum, checkpoint=None)

    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def report_interrupt(stop: TrainingInterrupted) -> None:
    """Print (rank zero) the summary so far and how to resume."""
    if rank_zero_only.rank != 0:
        return
    summary = getattr(stop, "summary", None)
    if stop.checkpoint:
        summary = summary or RunSummary(metrics={}, output_dir=Path(HydraConfig.get().runtime.output_dir))
        summary.resume = resume_command(stop.checkpoint)
    if summary is not None:
        summary.print()
    where = f" at epoch {stop.epoch}, step {stop.step}" if stop.step is not None else ""
    if stop.checkpoint:
        print(f"lightning-tricks train: stopped by {stop.signal_name}{where}; saved {stop.checkpoint}")
        print(f"resume with: {summary.resume}")
    else:
        print(f"lightning-tricks train: stopped by {stop.signal_name} outside the training steps; no checkpoint saved.")


@hydra.main(version_base="1.3", config_path="pkg://lightning_tricks.conf", config_name="train")
@logs_terminal
@exits_on_usage_error
@quiet_unless_verbose
def main(cfg: DictConfig) -> float | None:
    name_wandb_runs(cfg)
    try:
        with interrupts_stop_at_once():
            summary = train(cfg)
    except TrainingInterrupted as stop:
        report_interrupt(stop)
        raise  # a SystemExit: exit code 130 (SIGINT) or 143 (SIGTERM), through Hydra untouched
    summary.print()
    if rank_zero_only.rank == 0:
        summary.save(cfg.paths.output_dir)
    # `lightning-tricks tune` runs multi-process (DDP) trials as this command and reads the result here.
    result_file = os.environ.get("LIGHTNING_TRICKS_RESULT_FILE")
    if result_file and rank_zero_only.rank == 0:
        Path(result_file).write_text(json.dumps(summary.metrics))
    # Returned for Hydra sweepers (e.g. Optuna) that optimise the run's result.
    return summary.metrics.get("val/loss")
