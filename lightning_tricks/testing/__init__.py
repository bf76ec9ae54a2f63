"""Helpers for testing tricks (and users' models) in real runs: multi-process DDP, offline W&B read-back."""

from lightning_tricks.testing.ddp import DDPRunError, run_ddp
from lightning_tricks.testing.wandb_offline import OfflineRun, read_offline_run

__all__ = ["DDPRunError", "OfflineRun", "read_offline_run", "run_ddp"]
