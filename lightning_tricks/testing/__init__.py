"""Helpers for testing tricks (and users' models) in real multi-process runs."""

from lightning_tricks.testing.ddp import DDPRunError, run_ddp

__all__ = ["DDPRunError", "run_ddp"]
