"""TrainingHealthCheck judges the loss the user's training_step returned, also with gradient accumulation.

Lightning hands ``on_train_batch_end`` the loss divided by ``accumulate_grad_batches`` (the part it
back-propagates): with 4 it read 0.575 where the step returned 2.301.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_tricks import TrainingHealthCheck
from lightning_tricks.data import DigitsDataModule


class Returns(pl.LightningModule):
    """A digits classifier that keeps every loss its training_step returns."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.returned: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.returned.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("accumulate", [1, 4])
def test_recorded_losses_are_what_training_step_returned(accumulate: int) -> None:
    model, check = Returns(), TrainingHealthCheck(window=12, on_failure="ignore")
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=20, accumulate_grad_batches=accumulate, limit_val_batches=0, callbacks=[check],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule(seed=0))
    assert len(check.losses) == 12
    assert check.losses == model.returned[:12]  # the very numbers, one per training batch
    assert check.losses[0] > 2.0  # about ln 10 at init, not a quarter of it
