"""`lightning-tricks train ckpt_path=<a run's checkpoint>` continues that run: its folder, its own config, its
W&B run, its best checkpoints; overrides that would change the experiment are refused."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_tricks.commands.resume import SAFE_ON_RESUME, resume_arguments
from lightning_tricks.utilities.arguments import UsageError


@pytest.fixture
def run(tmp_path: Path, compose_train) -> Path:
    """A run folder as `train` leaves it: .hydra/config.yaml (this package's config, W&B logger) and a checkpoint."""
    folder = tmp_path / "outputs" / "train" / "2026-01-01_00-00-00"
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    cfg = compose_train("logger=wandb", "seed=7", tiny=False)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    OmegaConf.save(["logger=wandb", "seed=7"], folder / ".hydra" / "overrides.yaml")
    (folder / "wandb" / "offline-run-20260101_000000-abc123xy").mkdir(parents=True)
    return folder


def test_a_resume_reloads_the_runs_config_folder_and_wandb_run(run: Path) -> None:
    ckpt = run / "checkpoints" / "last.ckpt"
    # The run's own config; seed=7 typed again is the run's own value; max_epochs is safe.
    assert resume_arguments([f"ckpt_path={ckpt}", "trainer.max_epochs=40", "seed=7"]) == [
        "--config-dir",
        str(run / ".hydra"),
        "--config-name",
        "config",
        f"hydra.run.dir={run}",
        "++hydra.job_logging.formatters.message.format='%(message)s'",
        "++hydra.job_logging.handlers.console.formatter=message",
        "trainer.max_epochs=40",
        f"ckpt_path={ckpt}",
        "++logger.id=abc123xy",
        "++logger.resume=allow",
        "++logger.name='logger=wandb seed=7'",  # the first session's W&B name
    ]


@pytest.mark.parametrize("override", ["seed=1", "model.optimizer.lr=0.1", "callbacks.model_checkpoint=null"])
def test_an_override_that_changes_the_experiment_is_refused_unless_allowed(run: Path, override: str) -> None:
    ckpt = f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    with pytest.raises(UsageError, match=rf"`{override}` \(the run has .*\) would change the experiment.*"):
        resume_arguments([ckpt, override])
    assert override in resume_arguments([ckpt, override, "resume.allow_changes=true"])


def test_a_config_group_choice_is_refused_always(run: Path) -> None:
    ckpt = f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    for override in ("data=mnist1d", "trainer=ddp_cpu", "+callbacks@callbacks.lr=learning_rate_monitor"):
        with pytest.raises(UsageError, match="chooses a config-group option"):
            resume_arguments([ckpt, override, "resume.allow_changes=true"])


def test_not_a_resume_of_a_run_is_left_alone(run: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "x.ckpt"
    elsewhere.write_bytes(b"")
    for argv in (
        ["seed=1"],  # no checkpoint
        [f"ckpt_path={elsewhere}", "seed=1"],  # a checkpoint outside a run folder
        [f"ckpt_path={tmp_path / 'missing.ckpt'}"],  # the train command reports it
        [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "seed=1", "hydra.run.dir=new"],  # a new run, asked for
        [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--cfg", "job"],
    ):
        assert resume_arguments(argv) == argv
    assert "trainer.max_epochs" in SAFE_ON_RESUME


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "lightning_tricks", "train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def val_losses(path: Path) -> list[float]:
    with path.open() as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


@pytest.mark.slow
def test_train_resume_continues_the_run_in_its_folder_and_keeps_its_history_and_best(tmp_path: Path) -> None:
    small = ["data=synthetic/classification", "data.num_samples=600", "callbacks.overfit_batch_check=null"]
    small += ["callbacks.input_independent_baseline=null", "test=false", "logger=csv"]
    run = tmp_path / "run"
    first = cli(*small, "trainer.max_epochs=2", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"

    # Typed again without the run's overrides: refused, one line, nothing written anywhere.
    refused = cli(f"ckpt_path={ckpt}", "seed=1", "trainer.max_epochs=4", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "`seed=1` (the run has seed=42) would change the experiment" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    resumed = cli(f"ckpt_path={ckpt}", "trainer.max_epochs=4", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the same folder, no new one
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.trainer.max_epochs == 4 and saved.data.num_samples == 600  # its own config, max_epochs changed
    # The first session's metrics are kept; the second's follow in resumed-1/. Each session: one validation per
    # epoch, then the evaluation of the best checkpoint.
    before, after = val_losses(run / "csv" / "metrics.csv"), val_losses(run / "csv" / "resumed-1" / "metrics.csv")
    assert len(before) == 3 and len(after) == 3
    before, after = before[:2], after[:2]
    # Best-k continued across the resume: the best file is the best of all 4 epochs.
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    epoch = int(best.name[5:8])
    assert (before + after)[epoch] == min(before + after)
    assert f"best ckpt    {best}" in resumed.stdout
