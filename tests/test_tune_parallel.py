"""`lightning-tricks tune` with several workers on one study (SQLite, PostgreSQL) and with DDP trials.

Each worker is a real ``python -m lightning_tricks tune`` process. The workers get identical command
lines and differ only in their working directory, as on two machines: the study is shared through
``tune.storage`` (an absolute URL), while each worker's run directory (``outputs/tune/<study>/``,
relative to its working directory) receives the ``trials/NNNN/`` folders of the trials *it* ran, which
is how the test tells the workers apart (``tune`` records no worker id on a trial).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lightning_tricks.testing.postgres import find_postgres, postgres_server
from lightning_tricks.tuning.study import counted

# Tiny in-process trials (~1 s each): the digits MLP, a few batches, no recipe callbacks, CSV logs.
TINY = [
    "+trainer.limit_train_batches=6",
    "+trainer.limit_val_batches=3",
    "recipe=none",
    "logger=csv",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "test=false",
]
STUDY = "parallel"


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _tune_command(storage: str, n_trials: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lightning_tricks",
        "tune",
        *TINY,
        f"tune.n_trials={n_trials}",
        "tune.pruner=none",
        f"tune.storage={storage}",
        f"tune.study_name={STUDY}",
        "tune.heartbeat_interval=1",
        "tune.grace_period=5",
        *extra,
    ]


def _run_two_workers(tmp_path: Path, storage: str, n_trials: int) -> list[Path]:
    """Start two workers at once with the same command line; wait for both; their run directories."""
    command = _tune_command(storage, n_trials)
    workers = []
    for name in ("worker_a", "worker_b"):
        cwd = tmp_path / name
        cwd.mkdir()
        log = (cwd / "worker.log").open("w")
        proc = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        workers.append((proc, cwd, log))
    for proc, cwd, log in workers:
        try:
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        assert proc.returncode == 0, (cwd / "worker.log").read_text(errors="replace")[-3000:]
    return [cwd / "outputs" / "tune" / STUDY for _, cwd, _ in workers]


def _ran_by(run_dirs: list[Path]) -> list[set[int]]:
    """The numbers of the trials each worker ran (the ``trials/NNNN/`` folders in its run directory)."""
    return [{int(p.name) for p in (d / "trials").iterdir()} if (d / "trials").exists() else set() for d in run_dirs]


def _check_shared_study(storage: str, run_dirs: list[Path], n_trials: int) -> None:
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    ran = _ran_by(run_dirs)
    who = {number: "ab"[i] for i, numbers in enumerate(ran) for number in numbers}
    story = [(t.number, t.state.name, who.get(t.number), f"{t.datetime_start:%H:%M:%S.%f}") for t in trials]
    # Exactly the budget, counted over both workers the way `tune` counts; nothing left running.
    assert counted(trials) == n_trials, f"{counted(trials)} trials counted, budget {n_trials}: {story}"
    assert not [t for t in trials if t.state == TrialState.RUNNING], story
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials, [(t.number, t.state, t.user_attrs.get("failure")) for t in trials]
    assert all(math.isfinite(t.value) for t in complete)
    # No parameter set ran twice.
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == n_trials
    # Both workers ran trials, and every trial was run by exactly one of them.
    assert all(ran), f"a worker ran no trial: {story}"
    assert not ran[0] & ran[1], f"a trial ran in both workers: {ran}"
    # A trial both workers started at the same moment once the budget was full stops before training.
    surplus = {t.number for t in trials if t.user_attrs.get("surplus")}
    assert all(t.state == TrialState.FAIL for t in trials if t.number in surplus)
    assert ran[0] | ran[1] == {t.number for t in trials} - surplus
    # Each worker wrote the report of the whole study.
    for run_dir in run_dirs:
        assert (run_dir / "best.json").exists() and (run_dir / "trials.csv").exists()


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    storage, n = f"sqlite:///{tmp_path / 'study.db'}", 6
    run_dirs = _run_two_workers(tmp_path, storage, n)
    _check_shared_study(storage, run_dirs, n)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path: Path) -> None:
    if find_postgres() is None:
        if os.environ.get("LT_REQUIRE_POSTGRES") == "1":
            pytest.fail("LT_REQUIRE_POSTGRES=1 but the PostgreSQL binaries (initdb, pg_ctl) are missing.")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found; install Debian's `postgresql` package.")
    n = 6
    with postgres_server() as storage:
        run_dirs = _run_two_workers(tmp_path, storage, n)
        _check_shared_study(storage, run_dirs, n)


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(240)
def test_ddp_trials_are_one_optuna_trial_per_training_run(tmp_path: Path) -> None:
    # `trainer=ddp_cpu`: each trial a `lightning-tricks train` subprocess that starts 2 gloo ranks.
    n, epochs = 2, 2
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = _tune_command(storage, n, "trainer=ddp_cpu", f"trainer.max_epochs={epochs}")
    # Pruning on (so the callback reports every validation), but no trial can be pruned in a 2-trial study.
    command = [c for c in command if c != "tune.pruner=none"]
    command += ["tune.pruner=median", "tune.n_startup_trials=5", "tune.n_warmup_steps=0"]
    proc = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert len(trials) == n  # one trial per training run, not one per rank
    assert all(t.state == TrialState.COMPLETE and math.isfinite(t.value) for t in trials)
    run_dir = tmp_path / "outputs" / "tune" / STUDY
    for t in trials:
        # The rank-zero pruning callback reported once per validation epoch (no sanity check, no rank 1).
        assert sorted(t.intermediate_values) == list(range(epochs)), t.intermediate_values
        assert all(math.isfinite(v) for v in t.intermediate_values.values())
        train_log = (run_dir / "trials" / f"{t.number:04d}" / "train.log").read_text(errors="replace")
        assert "already reported" not in train_log  # Optuna's warning when a step is reported twice


def test_a_trial_started_after_the_budget_filled_does_not_train_or_count() -> None:
    """The race two workers can run into: both saw room for one more trial and both started one."""
    from lightning_tricks.tuning.study import _within_budget

    study = optuna.create_study()
    other_worker = study.ask()  # the other worker's trial, still running, fills a budget of 1
    calls = []
    study.optimize(_within_budget(study, lambda t: calls.append(t.number) or 0.0, 1), n_trials=1, catch=(Exception,))
    late = study.trials[-1]
    assert calls == [] and late.state == TrialState.FAIL and late.user_attrs["surplus"]
    assert counted(study.trials) == 1
    # With room left (a budget of 3), the same guard runs the objective.
    study.optimize(_within_budget(study, lambda t: calls.append(t.number) or 0.0, 3), n_trials=1, catch=(Exception,))
    assert calls == [study.trials[-1].number] and counted(study.trials) == 2
    study.tell(other_worker, 1.0)
