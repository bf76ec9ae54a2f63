"""The report of a ``lightning-tricks tune`` study: the best trial and its command line, counts per
state, ``trials.csv``, ``best.json``, Optuna's plots (also to a W&B summary run when W&B is the
logger) and a table on the console. Split from :mod:`lightning_tricks.tuning.study`, which calls
:func:`write_report` when a study ends.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from lightning_tricks.utilities.media import wandb_files_in_run

if TYPE_CHECKING:
    from lightning_tricks.tuning.study import TrialObjective

log = logging.getLogger("lightning_tricks.tuning.study")

__all__ = ["best_trial_summary", "save_plots", "state_counts", "trials_table", "write_report"]


def best_trial_summary(study: optuna.Study, objective: TrialObjective) -> dict[str, Any] | None:
    """The best complete trial: value, config values, overrides and the command line that reruns it."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    best = study.best_trial
    by_key = {s.key: s for s in objective.specs}
    params = {k: _config_value(by_key, k, v) for k, v in best.params.items()}
    overrides = best.user_attrs.get("overrides") or objective.overrides(params)
    return {
        "study": study.study_name,
        "trial": best.number,
        "metric": objective.metric,
        "direction": study.direction.name.lower(),
        "value": best.value,
        "params": params,
        "overrides": [*objective.base_overrides, *overrides],
        "command": objective.command(overrides),
        "trial_dir": str(objective.trial_dir(best.number)),
    }


def trials_table(study: optuna.Study, objective: TrialObjective) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of every trial: number, value, state, duration in seconds, the config values
    (``params_<key>``, as set on the config) and the user attributes (``user_attrs_<name>``).

    Built here rather than with ``study.trials_dataframe()``, which needs pandas: not a dependency of
    the package, so after a plain ``pip install`` the study would crash after its last trial, with no report.
    """
    trials = study.get_trials(deepcopy=False)
    by_key = {s.key: s for s in objective.specs}
    params = sorted({k for t in trials for k in t.params})
    attrs = sorted({k for t in trials for k in t.user_attrs})
    columns = ["number", "value", "state", "duration_s"]
    columns += [f"params_{k}" for k in params] + [f"user_attrs_{k}" for k in attrs]
    rows = []
    for trial in trials:
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        row = [trial.number, trial.value, trial.state.name, duration]
        row += [_config_value(by_key, k, trial.params[k]) if k in trial.params else None for k in params]
        row += [trial.user_attrs.get(k) for k in attrs]
        rows.append(row)
    return columns, rows


def _config_value(by_key: dict[str, Any], key: str, sampled: Any) -> Any:
    """What a trial set on the config for what Optuna sampled (a categorical choice may be a list)."""
    return by_key[key].decode(sampled) if key in by_key else sampled


def _write_trials_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> None:
    """The table as CSV; lists and mappings (overrides, categorical choices) as JSON, empty for none."""

    def cell(value: Any) -> Any:
        if value is None:
            return ""
        return json.dumps(value) if isinstance(value, (list, dict)) else value

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([cell(v) for v in row] for row in rows)


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    return counts


def save_plots(study: optuna.Study, run_dir: Path) -> dict[str, Path]:
    """Optuna's matplotlib plots as PNG files; a plot that cannot be drawn yet is skipped with a message."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    plots = {
        "optimization_history": (vis.plot_optimization_history, 1),
        "parallel_coordinate": (vis.plot_parallel_coordinate, 1),
        "param_importances": (vis.plot_param_importances, 2),
        "intermediate_values": (vis.plot_intermediate_values, 1),
    }
    saved = {}
    for name, (plot, needed) in plots.items():
        if len(complete) < needed:
            log.info("tune: %s needs %d complete trials, have %d; skipped", name, needed, len(complete))
            continue
        if name == "intermediate_values" and not any(t.intermediate_values for t in study.trials):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            figure = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
            path = run_dir / f"tune_{name}.png"
            figure.savefig(path, bbox_inches="tight", dpi=100)
            plt.close(figure)
            saved[name] = path
        except Exception as error:  # e.g. importances of a parameter that never varied
            log.info("tune: %s skipped: %s", name, error)
    return saved


def write_report(study: optuna.Study, run_dir: Path, objective: TrialObjective, train_cfg: DictConfig) -> dict:
    """``trials.csv``, ``best.json``, the plots (also to a W&B summary run when W&B is the logger), a table.

    Returns the best trial, the counts per state, the trials table ``(columns, rows)`` and the plots' files.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    columns, rows = trials_table(study, objective)
    _write_trials_csv(run_dir / "trials.csv", columns, rows)
    best = best_trial_summary(study, objective)
    counts = state_counts(study)
    report = {"best": best, "counts": counts, "storage_study": study.study_name}
    (run_dir / "best.json").write_text(json.dumps({**(best or {}), "counts": counts}, indent=2, default=str))
    plots = save_plots(study, run_dir)
    _log_to_wandb(study, train_cfg, plots, (columns, rows), best)
    _print_table(study, objective, best, counts, run_dir)
    # What the command's report.html shows too: the table and the plots of this study (not older files).
    return {**report, "trials": (columns, rows), "plots": plots}


def _log_to_wandb(
    study: optuna.Study,
    train_cfg: DictConfig,
    plots: dict,
    table: tuple[list[str], list[list[Any]]],
    best: dict | None,
) -> None:
    loggers = train_cfg.get("logger")
    nodes = [loggers] if loggers and "_target_" in loggers else list((loggers or {}).values())
    node = next((n for n in nodes if n is not None and str(n.get("_target_", "")).endswith("WandbLogger")), None)
    if node is None:
        return
    import wandb

    node = OmegaConf.to_container(node, resolve=True)
    run = wandb.init(
        project=node.get("project"),
        group=study.study_name,
        name=f"{study.study_name}-summary",
        job_type="tune-summary",
        dir=str(Path(train_cfg.paths.output_dir)),
        mode="offline" if node.get("offline", False) else None,
        config={"best": best},
        reinit="finish_previous",
    )
    try:
        with wandb_files_in_run(run):  # the table's artifact staged in the run's folder, not the home directory
            run.log({f"tune/{name}": wandb.Image(str(path)) for name, path in plots.items()})
            columns, rows = table
            run.log({"tune/trials": wandb.Table(columns=columns, data=[[str(v) for v in row] for row in rows])})
        if best is not None:
            run.summary.update({"best_value": best["value"], "best_trial": best["trial"], "command": best["command"]})
    finally:
        run.finish()


def _print_table(
    study: optuna.Study, objective: TrialObjective, best: dict | None, counts: dict[str, int], run_dir: Path
) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = [s.key for s in objective.specs]
    table = Table(
        title=f"lightning-tricks tune: study {study.study_name!r} ({objective.metric}, {study.direction.name.lower()})"
    )
    short = [k.rsplit(".", 1)[-1] for k in keys]
    headers = short if len(set(short)) == len(short) else keys
    for column in ("trial", "state", objective.metric, *headers):
        table.add_column(column, justify="left" if column == "state" else "right", no_wrap=True)
    trials = study.get_trials(deepcopy=False)
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    ranked = sorted(trials, key=lambda t: (t.value is None, sign * (t.value or 0.0)))
    by_key = {s.key: s for s in objective.specs}
    for trial in ranked[:15]:
        values = [by_key[k].decode(trial.params[k]) if k in trial.params else "" for k in keys]
        shown = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
        value = "" if trial.value is None else f"{trial.value:.4f}"
        table.add_row(str(trial.number), trial.state.name.lower(), value, *shown)
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(", ".join(f"{n} {state}" for state, n in counts.items() if n))
    if best is not None:
        console.print(f"best         trial {best['trial']}: {objective.metric} = {best['value']:.6g}")
        console.print(f"reproduce    {best['command']}")
    console.print(f"results      {run_dir} (best.json, trials.csv, tune_*.png, trials/)")
