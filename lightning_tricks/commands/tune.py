"""`lightning-tricks tune`: run (or resume, or join) a study, then write its report.

The study's parts are in :mod:`lightning_tricks.tuning` (objective, samplers, storage, workers,
report); this module composes them for the command, and gives in-process trials the ``train``
command's own :func:`~lightning_tricks.commands.train.train`.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import hydra
import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from lightning_tricks.commands.console import quiet_unless_verbose
from lightning_tricks.commands.html_report import HtmlReport
from lightning_tricks.commands.run_log import logs_terminal
from lightning_tricks.commands.train import train
from lightning_tricks.commands.usage_errors import exits_on_usage_error
from lightning_tricks.functional.search_space import grid_size, grid_space
from lightning_tricks.tuning.report import write_report
from lightning_tricks.tuning.study import (
    TrialObjective,
    counted,
    fingerprint,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
    pruner_config,
    run_worker,
    split_config,
    train_overrides,
    warmup_steps,
)

log = logging.getLogger("lightning_tricks.tuning.study")


def tune(cfg: DictConfig, overrides: Sequence[str] | None = None) -> optuna.Study:
    """Run (or resume, or join) the study the ``tune`` config describes; write its report; return it.

    ``overrides`` are the command-line overrides the config was composed with (read from Hydra when
    None); the ``train`` ones go into the command line that reproduces each trial.
    """
    train_cfg, specs, fixed = split_config(cfg)
    t = cfg.tune
    if overrides is None:
        overrides = _hydra_overrides()
    base = train_overrides(overrides)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage_url = None if t.storage is None else str(t.storage)
    storage = make_storage(storage_url, t.heartbeat_interval, t.grace_period)
    study, created = open_study(storage, t.study_name, t.direction, fingerprint(train_cfg, specs, fixed, t.metric))
    n_trials = t.n_trials
    if t.sampler == "grid":
        size = grid_size(grid_space(specs, t.grid_points))
        if n_trials > size:
            log.info("tune: the grid has %d points; running %d trials, not %d", size, size, n_trials)
            n_trials = size
    seed = t.seed
    if not created and seed is not None and t.sampler != "random":
        # Another worker (or an earlier run) uses `seed`: a different stream, so its trials are not copied.
        seed = zlib.crc32(f"{seed}-{os.getpid()}-{time.time_ns()}".encode())
    study.sampler = make_sampler(t.sampler, seed, specs, t.grid_points, t.n_startup_trials)
    # The validations of a full trial (one per epoch), when the trainer says: Hyperband's largest budget,
    # and what a null warm-up is half of.
    max_resource = train_cfg.trainer.get("max_epochs")
    max_resource = max_resource if isinstance(max_resource, int) and max_resource > 0 else None
    warmup = warmup_steps(t.n_warmup_steps, max_resource)
    study.pruner = make_pruner(t.pruner, t.n_startup_trials, warmup, max_resource)
    done = counted(study.get_trials(deepcopy=False))
    log.info(
        "tune: study %r (%s) %s, %d of %d trials counted; storage %s",
        t.study_name,
        t.sampler,
        "created" if created else "loaded",
        done,
        n_trials,
        _redact(storage_url),
    )
    objective = TrialObjective(
        train_cfg,
        specs,
        run_dir,
        metric=t.metric,
        fixed=fixed,
        pruning_monitor=None if t.pruner == "none" else t.pruning_monitor,
        pruner=pruner_config(t.pruner, t.n_startup_trials, warmup, max_resource),
        trial_process=t.trial_process,
        base_overrides=base,
        storage_url=None if storage_url is None else _absolute_sqlite(storage_url),
        train=train,
    )
    poll = min(float(t.heartbeat_interval), 5.0)
    run_worker(study, objective, n_trials, timeout=t.timeout, poll=poll, shared=storage is not None)
    report = write_report(study, run_dir, objective, train_cfg)
    print(f"report       {write_html(study, report, run_dir)}")
    return study


def write_html(study: optuna.Study, report: dict, run_dir: Path) -> Path:
    """``report.html``: the best trial and how to rerun it, trials per state, every trial, Optuna's plots."""
    page = HtmlReport(f"lightning-tricks tune: study {study.study_name!r}", str(run_dir))
    best = report["best"]
    page.section("Best trial")
    if best is None:
        page.text("No trial completed.")
    else:
        page.table(["", ""], [["trial", best["trial"]], [f"{best['metric']} ({best['direction']})", best["value"]]])
        page.table(["parameter", "value"], [[k, str(v)] for k, v in best["params"].items()])
        page.text(f"Reproduce (its run folder: {best['trial_dir']}):")
        page.code(best["command"])
    page.text(", ".join(f"{n} {state}" for state, n in report["counts"].items() if n) or "no trials")
    page.section("Trials")
    columns, rows = report["trials"]
    # A trial's overrides (a list) as the words of a command line, the other values as they are.
    cells = [[" ".join(map(str, v)) if isinstance(v, list) else v for v in row] for row in rows]
    page.table(columns, [[v if isinstance(v, (int, float, type(None))) else str(v) for v in row] for row in cells])
    if report["plots"]:
        page.section("Plots")
        page.figures(report["plots"])
    return page.save(run_dir)


def _absolute_sqlite(url: str) -> str:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url[len("sqlite:///") :]).resolve())
    return url


def _redact(url: str | None) -> str:
    if url is None:
        return "in memory (no resume)"
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


@hydra.main(version_base="1.3", config_path="pkg://lightning_tricks.conf", config_name="tune")
@logs_terminal
@exits_on_usage_error
@quiet_unless_verbose
def main(cfg: DictConfig) -> float | None:
    study = tune(cfg)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    return study.best_value if complete else None
