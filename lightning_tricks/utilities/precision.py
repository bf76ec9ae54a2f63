"""Side computations under the run's own precision: the inputs converted and the forward wrapped as
Lightning does for a training step, so that a check on a ``bf16-true`` model feeds it bf16 inputs
and one under ``bf16-mixed`` runs in autocast (issue: callbacks crashed with "Input type (float) and
bias type (BFloat16) should be the same").

Both go through the Trainer's public precision plugin: ``convert_input`` (what Lightning applies to
every batch) and ``forward_context`` (what wraps every step).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl


def to_model(trainer: pl.Trainer, batch: Any) -> Any:
    """``batch`` on the module's device and in the run's input precision, as a training step gets it."""
    return trainer.precision_plugin.convert_input(trainer.strategy.batch_to_device(batch))


@contextmanager
def run_precision(trainer: pl.Trainer) -> Iterator[None]:
    """The run's forward context (autocast for mixed precision, nothing for 32-bit)."""
    with trainer.precision_plugin.forward_context():
        yield
