"""`lightning-tricks tune` end to end: real Optuna studies of real Lightning runs composed by real Hydra."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from optuna.trial import TrialState

from lightning_tricks.commands.train import train
from lightning_tricks.commands.tune import tune
from lightning_tricks.functional.search_space import SearchSpaceError

# Tiny trials (a fraction of a second each): the digits MLP, a few batches, no recipe callbacks, CSV logs.
TINY = [
    "+trainer.limit_train_batches=6",
    "+trainer.limit_val_batches=3",
    "recipe=none",
    "logger=csv",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "test=false",
]


def compose_tune(tmp_path: Path, *overrides: str, params: dict | None = None, fixed: dict | None = None):
    with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
        cfg = compose("tune", overrides=[*TINY, f"paths.output_dir={tmp_path}", *overrides])
    if params is not None:
        OmegaConf.set_struct(cfg, False)
        cfg.hparams_search.params = params
        cfg.hparams_search.fixed = fixed or {}
        OmegaConf.set_struct(cfg, True)
    return cfg


def by_state(study: optuna.Study, state: TrialState) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state == state]


def test_study_reports_the_best_and_its_command_line_reproduces_it(tmp_path: Path) -> None:
    cfg = compose_tune(tmp_path, "tune.n_trials=4", "tune.pruner=none")
    study = tune(cfg, overrides=TINY)
    assert len(by_state(study, TrialState.COMPLETE)) == 4
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["value"] == study.best_value == min(t.value for t in study.trials)
    assert best["trial"] == study.best_trial.number and best["counts"]["complete"] == 4
    lr = best["params"]["model.optimizer.lr"]
    assert 1e-4 <= lr <= 3e-2 and best["params"]["data.batch_size"] in (16, 32, 64, 128)
    assert best["command"].startswith("lightning-tricks train +trainer.limit_train_batches=6")
    assert (
        f"model.optimizer.lr={lr!r}" in best["command"]
        and "model.optimizer._target_=torch.optim.AdamW" in best["command"]
    )
    for name in ("optimization_history", "parallel_coordinate", "param_importances"):
        assert (tmp_path / f"tune_{name}.png").stat().st_size > 1000
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 1 + 4
    assert (tmp_path / "trials" / f"{best['trial']:04d}" / "csv" / "metrics.csv").exists()

    # The printed command line, run as `train`, gives the best trial's value again.
    with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
        again = compose("train", overrides=[*best["overrides"], f"paths.output_dir={tmp_path / 'again'}"])
    assert train(again).metrics["val/loss"] == pytest.approx(best["value"], rel=1e-5)


def test_bad_search_key_fails_before_any_trial(tmp_path: Path) -> None:
    params = {"model.optimizer.lrr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    with pytest.raises(
        SearchSpaceError, match=r"`model.optimizer.lrr`: no such key .* Did you mean \['model.optimizer.lr'"
    ):
        tune(compose_tune(tmp_path, params=params), overrides=[])
    with pytest.raises(
        ValueError, match=r"`tune.sampler` must be one of \['random', 'qmc', 'tpe', 'grid'\], got 'sobol'"
    ):
        tune(compose_tune(tmp_path, "tune.sampler=sobol"), overrides=[])
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "trials").exists()


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    # SGD at lr=1e6 diverges to NaN; dropout 1.5 makes the model's constructor raise.
    params = {
        "model.optimizer.lr": {"type": "categorical", "choices": [0.05, 1.0e6]},
        "model.dropout": {"type": "categorical", "choices": [0.0, 1.5]},
    }
    cfg = compose_tune(
        tmp_path,
        "tune.sampler=grid",
        "tune.n_trials=4",
        params=params,
        fixed={"model.optimizer._target_": "torch.optim.SGD"},
    )
    study = tune(cfg, overrides=[])
    complete, failed = by_state(study, TrialState.COMPLETE), by_state(study, TrialState.FAIL)
    assert [t.params for t in complete] == [{"model.optimizer.lr": 0.05, "model.dropout": 0.0}]
    assert len(failed) == 3
    reasons = {(t.params["model.optimizer.lr"], t.params["model.dropout"]): t.user_attrs["failure"] for t in failed}
    assert "non-finite" in reasons[(1.0e6, 0.0)] or "non-finite" in reasons[(1.0e6, 0.0)].lower()
    assert "`dropout` must be in [0, 1)" in reasons[(0.05, 1.5)]
    assert json.loads((tmp_path / "best.json").read_text())["counts"] == {
        "running": 0,
        "complete": 1,
        "pruned": 0,
        "fail": 3,
        "waiting": 0,
    }


def test_pruning_stops_clearly_bad_trials_early(tmp_path: Path) -> None:
    epochs = 4
    params = {"model.optimizer.lr": {"type": "categorical", "choices": [1e-2, 1e-9]}}
    cfg = compose_tune(
        tmp_path,
        f"trainer.max_epochs={epochs}",
        "tune.n_trials=8",
        "tune.pruner=median",
        "tune.n_startup_trials=2",
        "tune.n_warmup_steps=0",
        params=params,
    )
    study = tune(cfg, overrides=[])
    pruned, complete = by_state(study, TrialState.PRUNED), by_state(study, TrialState.COMPLETE)
    assert len(pruned) + len(complete) == 8 and len(pruned) >= 1
    # Only the hopeless learning rate is pruned, and those trials stopped well before the end.
    assert all(t.params["model.optimizer.lr"] == 1e-9 for t in pruned)
    assert all(len(t.intermediate_values) < epochs for t in pruned)
    assert all(len(t.intermediate_values) == epochs for t in complete)
    for t in pruned:  # the run itself stopped: its CSV log has fewer epochs than max_epochs
        with (tmp_path / "trials" / f"{t.number:04d}" / "csv" / "metrics.csv").open() as f:
            ran = {int(row["epoch"]) for row in csv.DictReader(f)}
        assert max(ran) < epochs - 1


@pytest.mark.parametrize("sampler", ["random", "qmc", "tpe", "grid"])
def test_every_sampler_runs_and_grid_covers_its_grid_exactly(tmp_path: Path, sampler: str) -> None:
    params = {
        "model.optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True, "grid": [1e-3, 1e-2]},
        "data.batch_size": {"type": "categorical", "choices": [32, 64]},
    }
    cfg = compose_tune(
        tmp_path,
        "trainer.max_epochs=1",
        f"tune.sampler={sampler}",
        "tune.n_trials=6",
        "tune.pruner=none",
        params=params,
    )
    study = tune(cfg, overrides=[])
    complete = by_state(study, TrialState.COMPLETE)
    if sampler == "grid":  # a 2 x 2 grid: 4 trials, not 6, each point once
        points = sorted((t.params["model.optimizer.lr"], t.params["data.batch_size"]) for t in complete)
        assert points == sorted(itertools.product([1e-3, 1e-2], [32, 64]))
    else:
        assert len(complete) == 6
        assert all(1e-3 <= t.params["model.optimizer.lr"] <= 1e-2 for t in complete)
        assert len({t.params["model.optimizer.lr"] for t in complete}) == 6


@pytest.mark.slow
def test_subprocess_trials_report_to_the_study(tmp_path: Path) -> None:
    # The path DDP trials take (`trainer=ddp_cpu` picks it automatically): each trial a `train` process.
    params = {"model.optimizer.lr": {"type": "categorical", "choices": [1e-2, 1e-9]}}
    cfg = compose_tune(
        tmp_path,
        "trainer.max_epochs=4",
        "tune.trial_process=subprocess",
        "tune.n_trials=4",
        "tune.sampler=grid",
        "tune.n_startup_trials=1",
        "tune.n_warmup_steps=0",
        params={**params, "data.batch_size": {"type": "categorical", "choices": [32, 64]}},
    )
    study = tune(cfg, overrides=TINY)
    assert len(study.trials) == 4 and not by_state(study, TrialState.FAIL)
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)  # reported from the child process
    # The child judged with the study's pruner (n_startup_trials=1, no warm-up): Optuna's default
    # (MedianPruner with 5 startup trials) could prune nothing in a 4-trial study.
    pruned = by_state(study, TrialState.PRUNED)
    assert pruned and all(t.params["model.optimizer.lr"] == 1e-9 for t in pruned)
    assert all(len(t.intermediate_values) == 1 for t in pruned)  # stopped after its first validation
    for t in by_state(study, TrialState.COMPLETE):
        assert json.loads((tmp_path / "trials" / f"{t.number:04d}" / "result.json").read_text())["val/loss"] == t.value


def _cli(run_dir: Path, n_trials: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lightning_tricks",
        "tune",
        *TINY,
        "trainer.max_epochs=3",
        f"tune.n_trials={n_trials}",
        "tune.pruner=none",
        "tune.heartbeat_interval=1",
        "tune.grace_period=3",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow
def test_killed_study_resumes_without_losing_or_repeating_trials(tmp_path: Path) -> None:
    run_dir, n = tmp_path / "study", 6
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        _cli(run_dir, n), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    storage = f"sqlite:///{run_dir / 'study.db'}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (run_dir / "study.db").exists():
            try:
                states = [t.state for t in optuna.load_study(study_name="digits", storage=storage).trials]
            except Exception:  # the study is being created
                continue
            if states.count(TrialState.COMPLETE) >= 2 and TrialState.RUNNING in states:
                break  # kill it in the middle of a trial
    proc.send_signal(signal.SIGKILL)  # no cleanup of any kind: a crashed machine
    proc.wait()
    before = optuna.load_study(study_name="digits", storage=storage).trials
    finished_before = {t.number: (t.params, t.value) for t in before if t.state == TrialState.COMPLETE}
    assert 2 <= len(finished_before) < n

    rerun = subprocess.run(_cli(run_dir, n), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = optuna.load_study(study_name="digits", storage=storage).trials
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == n
    # Completed trials were kept as they were, and not run again.
    assert {t.number: (t.params, t.value) for t in complete if t.number in finished_before} == finished_before
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == n
    # The trial the kill interrupted failed (no heartbeat) and ran again with the same values.
    running_before = {t.number for t in before if t.state == TrialState.RUNNING}
    assert len(running_before) == 1
    assert {t.number for t in after if t.state == TrialState.FAIL} == running_before
    for t in (t for t in after if t.number in running_before):
        assert "failure" not in t.user_attrs
        (retry,) = [r for r in complete if r.system_attrs.get("failed_trial") == t.number]
        assert not t.params or retry.params == t.params
    assert not [t for t in after if t.state == TrialState.RUNNING]
    assert "reproduce    lightning-tricks train" in rerun.stdout
    assert json.loads((run_dir / "best.json").read_text())["counts"]["complete"] == n


@pytest.mark.slow
def test_each_trial_is_a_wandb_run_grouped_by_study(tmp_path: Path) -> None:
    from lightning_tricks.testing import read_offline_run

    tiny = [o for o in TINY if o != "logger=csv"]
    with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
        cfg = compose("tune", overrides=[*tiny, "logger=wandb", f"paths.output_dir={tmp_path}", "tune.n_trials=2"])
    study = tune(cfg, overrides=[])
    for trial in study.trials:
        (run_dir,) = (tmp_path / "trials" / f"{trial.number:04d}" / "wandb").glob("offline-run-*")
        run = read_offline_run(run_dir)
        assert run.values("val/loss") and run.config["model"]["optimizer"]["lr"] == pytest.approx(
            trial.params["model.optimizer.lr"]
        )
        assert run.name.startswith(f"trial-{trial.number}") and run.group == "digits"  # group = study
        assert all(run_dir in f.parents for f in run.staged_files())
    # One more run for the study: the plots and the trials table.
    (summary_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    summary = read_offline_run(summary_dir)
    assert "tune/optimization_history" in {
        key.split("/")[0] + "/" + key.split("/")[1] for key in summary.summary if key.startswith("tune/")
    }
    assert summary.summary["best_trial"] == study.best_trial.number
    assert [row["number"] for row in summary.table("tune/trials")] == ["0", "1"]
    assert summary.staged_files() and all(summary_dir in f.parents for f in summary.staged_files())


def test_a_rerun_with_another_config_does_not_join_the_study(tmp_path: Path) -> None:
    tune(compose_tune(tmp_path, "tune.n_trials=1", "trainer.max_epochs=1"), overrides=[])
    # Same study name and database, another trainer: mixing its trials into the study would be wrong.
    with pytest.raises(ValueError, match=r"another config or search space \(config.trainer.max_epochs: 1 -> 2\)"):
        tune(compose_tune(tmp_path, "tune.n_trials=2", "trainer.max_epochs=2"), overrides=[])
    # More trials, another sampler, a progress bar: the same study, resumed.
    study = tune(compose_tune(tmp_path, "tune.n_trials=2", "trainer.max_epochs=1", "tune.sampler=tpe"), overrides=[])
    assert [t.number for t in study.trials] == [0, 1]


# The `lightning-tricks` command in a Python where pandas is not installed, as after a plain `pip install .`
# (pandas is only a dev extra): the finder of installed packages is told to find no pandas, so
# `import pandas` raises ModuleNotFoundError and `importlib.util.find_spec("pandas")` is None (W&B and torch
# probe with it). Not `sys.modules["pandas"] = None`: scikit-learn reads that entry and crashes on None.
WITHOUT_PANDAS = """
import importlib.machinery, sys

class PathFinderWithoutPandas(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] == "pandas" else super().find_spec(name, path, target)

sys.meta_path[:] = [
    PathFinderWithoutPandas if f is importlib.machinery.PathFinder else f for f in sys.meta_path
]
assert "pandas" not in sys.modules and importlib.util.find_spec("pandas") is None
from lightning_tricks.commands.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_tune_report_is_written_without_pandas(tmp_path: Path) -> None:
    from lightning_tricks.testing import read_offline_run

    run_dir = tmp_path / "study"
    tiny = [o for o in TINY if o != "logger=csv"]
    command = [sys.executable, "-c", WITHOUT_PANDAS, "tune", *tiny, "trainer.max_epochs=1", "logger=wandb"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [*command, "tune.n_trials=2", "tune.pruner=none", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trials.csv" in proc.stdout and "pandas" not in proc.stdout + proc.stderr
    best = json.loads((run_dir / "best.json").read_text())
    with (run_dir / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["number"] for row in rows] == ["0", "1"] and {row["state"] for row in rows} == {"COMPLETE"}
    row = rows[best["trial"]]
    assert float(row["value"]) == best["value"]
    assert float(row["params_model.optimizer.lr"]) == best["params"]["model.optimizer.lr"]
    overrides = json.loads(row["user_attrs_overrides"])  # the trial's own, after the command line's
    assert overrides and best["overrides"][-len(overrides) :] == overrides
    for name in ("optimization_history", "parallel_coordinate", "param_importances"):
        assert (run_dir / f"tune_{name}.png").stat().st_size > 1000
    (summary_dir,) = (run_dir / "wandb").glob("offline-run-*")
    summary = read_offline_run(summary_dir).summary
    assert summary["best_trial"] == best["trial"] and any(key.startswith("tune/trials") for key in summary)


def test_pruning_callback_arguments_are_checked() -> None:
    from lightning_tricks.callbacks import OptunaPruning

    with pytest.raises(ValueError, match="needs `trial`, or `study_name` and `trial_id`"):
        OptunaPruning(monitor="val/loss")
    with pytest.raises(ValueError, match="`monitor` must be the name of a logged metric, got ''"):
        OptunaPruning(monitor="", study_name="s", trial_id=0)
    with pytest.raises(ValueError, match="`trial_id` must be an integer trial id, got '3'"):
        OptunaPruning(study_name="s", trial_id="3")
