"""Shared fixtures: real Hydra composition of conf/, tiny Trainers, W&B offline, the DDP runner."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Real W&B, but offline and quiet; never an account or network.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

# One thread per test process under pytest-xdist (`make test` runs one worker per core): two workers with
# torch's default (a thread per core each), and their DDP and CLI subprocesses, oversubscribe the cores and
# ran the suite slower than one process. Subprocesses inherit it through OMP_NUM_THREADS (Lightning's DDP
# launcher keeps a value the user set).
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# Overrides that shrink the real config for CPU tests.
TINY = [
    "trainer.max_epochs=2",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "logger=csv",
]


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service() -> Iterator[None]:
    """A W&B run in this process starts a W&B service and puts its address in ``WANDB_SERVICE``; every
    subprocess a later test starts (torchrun jobs, CLI runs) would then inherit it and share this process's
    service, which still holds the ids of runs whose processes have ended ("run ID ... is in use" on a resume
    with the same id). Each subprocess starts its own service, as in a user's shell; this process keeps its
    connection (W&B caches it), so in-process runs are unaffected."""
    os.environ.pop("WANDB_SERVICE", None)
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., object]:
    """Compose the installed `train` config (conf/) with overrides, output under tmp_path."""
    from hydra import compose, initialize_config_module

    def _compose(*overrides: str, tiny: bool = True):
        with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
            return compose(
                "train",
                overrides=[*(TINY if tiny else []), f"paths.output_dir={tmp_path}", *overrides],
            )

    return _compose


@pytest.fixture
def chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path
