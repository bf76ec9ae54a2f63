"""The report of a ``lightning-tricks tune`` study: the best trial and its command line, counts per
state, ``trials.csv``, ``best.json``, Optuna's plots (also to a W&B summary run when W&B is the
logger) and a table on the console. Split from :mod:`lightning_tricks.tuning.study`, which calls
:func:`write_report` when a study ends.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

if TYPE_CHECKING:
    from lightning_tricks.tuning.study import TrialObjective

log = logging.getLogger("lightning_tricks.tuning.study")

__all__ = ["best_trial_summary", "save_plots", "state_counts", "write_report"]


def best_trial_summary(study: optuna.Study, objective: TrialObjective) -> dict[str, Any] | None:
    """The best complete trial: value, config values, overrides and the command line that reruns it."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    best = study.best_trial
    by_key = {s.key: s for s in objective.specs}
    params = {k: by_key[k].decode(v) if k in by_key else v for k, v in best.params.items()}
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
    """``trials.csv``, ``best.json``, the plots (also to a W&B summary run when W&B is the logger), a table."""
    run_dir.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs"))
    frame.to_csv(run_dir / "trials.csv", index=False)
    best = best_trial_summary(study, objective)
    counts = state_counts(study)
    report = {"best": best, "counts": counts, "storage_study": study.study_name}
    (run_dir / "best.json").write_text(json.dumps({**(best or {}), "counts": counts}, indent=2, default=str))
    plots = save_plots(study, run_dir)
    _log_to_wandb(study, train_cfg, plots, frame, best)
    _print_table(study, objective, best, counts, run_dir)
    return report


def _log_to_wandb(study: optuna.Study, train_cfg: DictConfig, plots: dict, frame: Any, best: dict | None) -> None:
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
        run.log({f"tune/{name}": wandb.Image(str(path)) for name, path in plots.items()})
        run.log({"tune/trials": wandb.Table(dataframe=frame.astype(str))})
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
