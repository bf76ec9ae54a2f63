"""`lightning-tricks` end to end, as a user runs it: real Hydra, real Lightning, real W&B (offline)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightning_tricks.models import MLP
from lightning_tricks.testing import read_offline_run

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lightning_tricks", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_help_lists_commands_and_config_groups(tmp_path: Path) -> None:
    top = ok(cli("--help", cwd=tmp_path)).stdout
    assert "train" in top and "preflight" in top and "lr-find" in top and "usage: lightning-tricks <command>" in top
    train = ok(cli("train", "--help", cwd=tmp_path)).stdout
    for line in ("data: digits, mnist1d", "data/synthetic: classification, imbalanced, regression"):
        assert line in train
    assert "trainer: cpu, ddp, ddp_cpu, gpu" in train and "logger: csv, none, tensorboard, wandb" in train
    assert "scheduler: cyclical, exp, fixed, inv, multistep, none, poly, sigmoid, step" in train
    bad = cli("tarin", cwd=tmp_path)
    choices = "['ensemble', 'inspect', 'lr-find', 'preflight', 'train', 'tune']"
    assert bad.returncode == 2 and f"unknown command 'tarin'; choose one of {choices}" in bad.stderr


@pytest.mark.slow
def test_train_with_wandb_offline_writes_a_readable_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = ok(cli("train", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path))
    (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    run = read_offline_run(wandb_dir)
    assert len(run.values("val/acc")) == 2 + 1  # one per epoch, then the final validate() of the best checkpoint
    assert run.summary["test/acc"] > 0.5 and run.config["seed"] == 42
    assert run.config["model"]["optimizer"]["lr"] == 3e-4  # the whole Hydra config is the run's config
    # The summary tells where things are and how to open them.
    assert "test" in proc.stdout and f"wandb sync {wandb_dir}" in proc.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_train_with_csv_logger_and_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ok(cli("train", "logger=csv", "trainer.max_epochs=1", "test=false", f"hydra.run.dir={run_dir}", cwd=tmp_path))
    rows = read_csv(run_dir / "csv" / "metrics.csv")
    assert any(r.get("val/acc") for r in rows) and not any(r.get("test/acc") for r in rows)
    # Resume for one more epoch from the last checkpoint: the epoch counter continues.
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resumed = tmp_path / "resumed"
    ok(
        cli(
            "train", "logger=csv", "trainer.max_epochs=2", f"ckpt_path={ckpt}", f"hydra.run.dir={resumed}", cwd=tmp_path
        )
    )
    epochs = {r["epoch"] for r in read_csv(resumed / "csv" / "metrics.csv") if r.get("train/loss_epoch")}
    assert epochs == {"1"}


@pytest.mark.slow
def test_preflight_command_passes_the_default_model_and_fails_a_crippled_one(tmp_path: Path) -> None:
    good = tmp_path / "good"
    proc = ok(cli("preflight", f"hydra.run.dir={good}", cwd=tmp_path))
    assert "all checks passed" in proc.stdout and (good / "preflight.md").exists()
    report = json.loads((good / "preflight.json").read_text())
    assert report["passed"] and len(report["checks"]) == 5
    assert (good / "preflight_overfit_batch_curve.png").exists()
    # A failed check fails the command, as a CI gate needs: here the init loss cannot be the 100 it is told to be.
    bad = tmp_path / "bad"
    proc = cli("preflight", "callbacks.init_loss_check.expected=100", f"hydra.run.dir={bad}", cwd=tmp_path)
    assert proc.returncode == 1 and "1 of 5 checks failed" in proc.stdout
    assert json.loads((bad / "preflight.json").read_text())["passed"] is False
    # The log file holds what the terminal showed, the report too (it was empty before: issue 16).
    log = (bad / "preflight.log").read_text()
    assert "1 of 5 checks failed" in log and "overfit_batch" in log
    # One optimizer step cannot overfit a batch, but it is no evidence against the model either: the verdict is
    # inconclusive, which is not a failure (exit 0), and the report says so.
    short = tmp_path / "short"
    proc = ok(cli("preflight", "callbacks.overfit_batch_check.max_steps=1", f"hydra.run.dir={short}", cwd=tmp_path))
    assert "no check failed, 1 inconclusive" in proc.stdout
    (overfit,) = [
        c for c in json.loads((short / "preflight.json").read_text())["checks"] if c["name"] == "overfit_batch"
    ]
    assert overfit["verdict"] == "inconclusive" and "max_steps=300" in overfit["message"]


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_unknown_group_option_lists_the_available_ones(tmp_path: Path) -> None:
    proc = cli("train", "data=cifar10", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'data/cifar10'" in proc.stderr and "digits" in proc.stderr and "mnist1d" in proc.stderr


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_negative_learning_rate_fails_before_training_and_keeps_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    precious = run_dir / "checkpoints" / "last.ckpt"
    precious.write_bytes(b"an earlier run's checkpoint")
    proc = cli("train", "logger=csv", "model.optimizer.lr=-0.1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "`optimizer` Adam(" in proc.stderr and "Invalid learning rate: -0.1" in proc.stderr
    assert precious.read_bytes() == b"an earlier run's checkpoint"
    assert not (run_dir / "csv").exists()  # nothing was trained or logged


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", "`seed` must be an integer in [0, 4294967295], got -1"),
        ("eval_ckpt=bets", "`eval_ckpt` must be 'best', 'last', null or an existing checkpoint file, got 'bets'"),
        ("ckpt_path=nowhere.ckpt", "`ckpt_path` must be an existing checkpoint file to resume from"),
    ],
)
@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_bad_run_settings_fail_before_training(tmp_path: Path, override: str, message: str) -> None:
    run_dir = tmp_path / "run"
    proc = cli("train", "logger=csv", override, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr  # a usage error (tests/test_usage_errors.py)
    assert not (run_dir / "csv").exists() and not (run_dir / "checkpoints").exists()


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_unknown_task_name_is_a_clear_error(tmp_path: Path) -> None:
    proc = cli("train", "data=synthetic/classification", "data.task=clasification", cwd=tmp_path)
    assert proc.returncode != 0
    assert "`task` must be one of" in proc.stderr and "'clasification'" in proc.stderr


@pytest.mark.slow
def test_multirun_starts_one_wandb_run_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    ok(cli("train", "-m", "seed=1,2", "trainer.max_epochs=1", "test=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    runs = [read_offline_run(d) for d in sorted(sweep.glob("*/wandb/offline-run-*"))]
    assert sorted(r.config["seed"] for r in runs) == [1, 2]
    assert len({r.path.name for r in runs}) == 2 and all(r.values("val/acc") for r in runs)


@pytest.mark.slow
@pytest.mark.ddp
def test_train_on_two_cpu_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = ok(
        cli("train", "trainer=ddp_cpu", "logger=csv", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    )
    # Lightning re-launched the command for rank 1, which found its sub-command and the same run dir.
    assert (run_dir / "train_ddp_process_1.log").exists()
    assert any(r.get("test/acc") for r in read_csv(run_dir / "csv" / "metrics.csv"))
    # The suite's own exact metrics are not mistaken by Lightning for rank-local ones.
    assert "sync_dist=True" not in proc.stdout + proc.stderr

    # The summary's val and test numbers count every sample once (Lightning's DDP evaluation pads the
    # shards): equal to sum / count over each split in one process, with the evaluated checkpoint.
    summary = json.loads((run_dir / "summary.json").read_text())
    datamodule = instantiate(OmegaConf.load(run_dir / ".hydra" / "config.yaml").data, _convert_="all")
    datamodule.setup("fit")
    datamodule.setup("test")
    model = MLP.load_from_checkpoint(summary["best_checkpoint"], map_location="cpu").eval()
    for split, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
        loss_sum, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                logits = model(x)
                loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                count += len(y)
        assert summary["metrics"][f"{split}/loss"] == pytest.approx(loss_sum / count, rel=1e-5)
        assert summary["metrics"][f"{split}/acc"] == pytest.approx(correct / count, rel=1e-6)
        assert f"DDP: {split}/loss" in proc.stdout


@pytest.mark.parametrize("command", ["train", "preflight", "inspect", "lr-find", "tune", "ensemble"])
def test_help_answers_from_the_config_without_importing_lightning(command: str) -> None:
    """`<command> --help` took 7.7 s, nearly all importing Lightning and torch; it needs the config only."""
    code = textwrap.dedent(
        f"""
        import sys
        from lightning_tricks.commands.cli import main
        sys.argv = ["lightning-tricks", "{command}", "--help"]
        try:
            main()
        except SystemExit as stop:
            assert not stop.code, stop.code
        heavy = sorted(m for m in ("lightning", "torch", "wandb") if m in sys.modules)
        print("IMPORTED", heavy)
        """
    )
    proc = ok(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120))
    assert "== Configuration groups ==" in proc.stdout and f"lightning-tricks {command}" in proc.stdout
    assert "IMPORTED []" in proc.stdout
