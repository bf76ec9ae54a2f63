"""What a command's W&B runs look like in a dashboard: named, grouped and tagged from Hydra, with their
metrics declared.

A W&B dashboard of a multirun is otherwise a list of random ids. From the Hydra job:

* **name**: the job's command-line overrides as typed (``seed=1 model=cnn``), else the job's name
  (``train``);
* **group**: for a multirun, its sweep folder (``train-multirun/2026-11-28_04-24-37``): the jobs of one
  multirun, and its overview run, are one group; none for a single run;
* **tags**: the config options chosen (``data=digits``, ``model=mlp``, ``recipe=default``, ...).

Each is filled only where the config leaves it empty (``logger.name``, ``logger.group``,
``logger.tags``): what a user, or ``tune`` (one group per study), sets wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, open_dict

# Groups whose choice says nothing about the experiment (where files go, which logger), and Hydra's own.
_UNTAGGED_GROUPS = ("paths", "logger")
# W&B refuses longer names and tags.
_MAX_NAME, _MAX_TAG = 128, 64

# Per-epoch metrics are plotted against the epoch (Lightning logs `epoch` with them); the rest keep
# Lightning's axis, `trainer/global_step`. The best validation loss (and accuracy) is kept in the
# run's summary next to the last value: the last is the final evaluation of the chosen checkpoint.
EPOCH_METRICS = ("val/*", "tricks/full_loss/*")
SUMMARIES = {"val/loss": "min,last", "val/acc": "max,last", "tricks/full_loss/val": "min,last"}


def wandb_nodes(logger_cfg: Any) -> list[DictConfig]:
    """The ``WandbLogger`` configs under ``logger`` (one logger, or a dict of loggers)."""
    if not logger_cfg:
        return []
    nodes = [logger_cfg] if "_target_" in logger_cfg else list(logger_cfg.values())
    return [n for n in nodes if n is not None and str(n.get("_target_", "")).endswith("WandbLogger")]


def sweep_group(sweep_dir: str | Path) -> str:
    """A multirun's W&B group: the last two parts of its sweep folder (``train-multirun/<time>``)."""
    return "/".join(Path(sweep_dir).parts[-2:])[:_MAX_NAME]


def identity() -> dict[str, Any]:
    """Name, group, tags and job type (the command) of the current Hydra job's W&B run (group None
    outside a multirun)."""
    hydra = HydraConfig.get()
    overrides = " ".join(hydra.overrides.task)
    name = (overrides or hydra.job.name)[:_MAX_NAME]
    group = sweep_group(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None
    tags = [
        f"{key}={value}"[:_MAX_TAG]
        for key, value in hydra.runtime.choices.items()
        if value is not None and "@" not in key and not key.startswith("hydra/") and key not in _UNTAGGED_GROUPS
    ]
    return {"name": name, "group": group, "tags": sorted(tags), "job_type": hydra.job.name}


def name_wandb_runs(cfg: DictConfig) -> None:
    """Fill the empty name, group and tags of every W&B logger in ``cfg`` from the Hydra job."""
    nodes = wandb_nodes(cfg.get("logger"))
    if not nodes or not HydraConfig.initialized():
        return
    run = identity()
    for node in nodes:
        with open_dict(node):
            for key, value in run.items():
                if not node.get(key) and value:
                    node[key] = value


def declare_wandb_metrics(loggers: Iterable[Any]) -> None:
    """Declare step axes and summaries on every W&B run (rank zero creates the run; others have none)."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        run = logger.experiment  # on ranks > 0 a stand-in that ignores every call
        run.define_metric("epoch")
        for pattern in EPOCH_METRICS:
            run.define_metric(pattern, step_metric="epoch", step_sync=True)
        for name, summary in SUMMARIES.items():
            # An exact name overrides the globs: it repeats the step axis.
            run.define_metric(name, step_metric="epoch", step_sync=True, summary=summary)
