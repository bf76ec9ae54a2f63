"""Helpers for testing tricks (and users' models) in real runs: multi-process DDP, offline W&B read-back,
a throwaway PostgreSQL server."""

from lightning_tricks.testing.ddp import DDPRunError, run_ddp
from lightning_tricks.testing.postgres import find_postgres, postgres_server
from lightning_tricks.testing.wandb_offline import OfflineRun, read_offline_run

__all__ = ["DDPRunError", "OfflineRun", "find_postgres", "postgres_server", "read_offline_run", "run_ddp"]
