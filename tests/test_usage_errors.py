"""A mistake the user can fix gives one clear line on stderr, exit code 2, no traceback, and leaves no folder
behind; any other exception keeps its traceback. Each case runs the real `lightning-tricks` command in a fresh
directory, where Hydra would create `outputs/<command>/<time>/` before the command runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "lightning_tricks", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_usage_error(proc: subprocess.CompletedProcess, *facts: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fact in facts:
        assert fact in lines[0]
    return lines[0]


def contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_train_with_a_missing_ckpt_path(tmp_path: Path) -> None:
    proc = cli("train", "logger=csv", "ckpt_path=runs/last.ckpt", cwd=tmp_path)
    line = assert_one_line_usage_error(proc, "`ckpt_path`", "'runs/last.ckpt'", "an existing checkpoint file")
    assert line.startswith("lightning-tricks train: ")
    assert contents(tmp_path) == []  # Hydra's outputs/train/<time>/ (and outputs/, new too) removed


@pytest.fixture
def search_spaces(tmp_path: Path) -> Path:
    """The user's own search spaces, next to ours through `--config-dir` (README: Tune)."""
    folder = tmp_path / "my_conf" / "hparams_search"
    folder.mkdir(parents=True)
    (folder / "typo.yaml").write_text(
        "name: typo\nparams:\n  model.optimizer.lrr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    (folder / "reversed.yaml").write_text(
        "name: reversed\nparams:\n  model.optimizer.lr: {type: float, low: 1.0e-2, high: 1.0e-4, log: true}\n"
    )
    return folder.parent


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_tune_with_a_search_space_key_the_config_lacks(tmp_path: Path, search_spaces: Path) -> None:
    proc = cli("tune", "--config-dir", str(search_spaces), "hparams_search=typo", cwd=tmp_path)
    assert_one_line_usage_error(proc, "`model.optimizer.lrr`: no such key", "Did you mean ['model.optimizer.lr'")
    assert contents(tmp_path) == contents(search_spaces.parent)  # no outputs/tune/typo/, no study.db


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_tune_with_a_reversed_range(tmp_path: Path, search_spaces: Path) -> None:
    proc = cli("tune", "--config-dir", str(search_spaces), "hparams_search=reversed", cwd=tmp_path)
    assert_one_line_usage_error(proc, "`model.optimizer.lr`", "`low` (0.01) must not exceed `high` (0.0001)")
    assert contents(tmp_path) == contents(search_spaces.parent)


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_ensemble_of_members_trained_on_different_splits(tmp_path: Path) -> None:
    """Two runs of `train -m seed=1,2 data.seed=1,2`: each has its own test set."""
    for seed in (1, 2):
        run = tmp_path / "runs" / str(seed)
        with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
            config = compose("train", overrides=[f"seed={seed}", f"data.seed={seed}"])
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(config, run / ".hydra" / "config.yaml")  # as Hydra saves it: interpolations kept
        (run / "checkpoints").mkdir()
        torch.save({"state_dict": {}}, run / "checkpoints" / "epoch001.ckpt")  # refused before it is read
    before = contents(tmp_path)
    proc = cli("ensemble", "checkpoints=runs/*/checkpoints/*.ckpt", cwd=tmp_path)
    assert_one_line_usage_error(
        proc, "trained on different data", "data.seed ([1] vs [2])", "-m seed=0,1,2 data.seed=42", "from_run=false"
    )
    assert contents(tmp_path) == before  # the ensemble command's empty outputs/ensemble/<time>/ is gone


@pytest.mark.slow
def test_a_run_folder_that_existed_before_is_kept(tmp_path: Path) -> None:
    kept, empty = tmp_path / "kept", tmp_path / "empty"
    (kept / "checkpoints").mkdir(parents=True)
    (kept / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    empty.mkdir()
    for run_dir in (kept, empty):
        proc = cli("train", "logger=csv", "ckpt_path=nowhere.ckpt", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert_one_line_usage_error(proc, "`ckpt_path`")
        assert run_dir.is_dir()
    assert (kept / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run's checkpoint"


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_any_other_exception_keeps_its_traceback_and_the_run_folder(tmp_path: Path) -> None:
    """Not a UsageError (here a bug in a user's callback): Hydra's traceback, exit code 1, the folder kept."""
    (tmp_path / "buggy.py").write_text(
        "from lightning.pytorch.callbacks import Callback\n\n\n"
        "class Buggy(Callback):\n"
        "    def on_fit_start(self, trainer, pl_module):\n"
        "        return 1 / 0\n"
    )
    run_dir = tmp_path / "run"
    proc = cli(
        "train", "recipe=none", "logger=csv", "+callbacks.buggy._target_=buggy.Buggy", f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "ZeroDivisionError: division by zero" in proc.stderr
    assert (run_dir / ".hydra" / "config.yaml").is_file()
