"""Your own model, trained by the `lightning-tricks train` command, from the folder it lives in.

Run it from this folder (no PYTHONPATH needed: the command imports modules of the current folder)::

    cd examples/own_model
    lightning-tricks train model._target_=mymodule.MyModel trainer.max_epochs=5 logger=csv

The model is built by Hydra from the model config (``conf/model/mlp.yaml``, the default): its keys
(``hidden_sizes``, ``dropout``, ``optimizer``, ``scheduler``, ``weight_decay``) and, at the call site, the
data's facts (``input_shape``, ``num_outputs``, ``task``). A model takes the ones it uses and may ignore
the rest; ``model.hidden_sizes=[32]`` on the command line changes one. The recipe's callbacks (seed, bias
init, checks, monitors, checkpoints) work on it as written: the loss is computed inline in
``training_step``, and the output layer is its last ``nn.Linear``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F


class MyModel(pl.LightningModule):
    """A one-hidden-layer MLP: the user's model, not one of ours."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        hidden_sizes: Sequence[int] = (64,),
        **unused: Any,  # the MLP config's other keys (dropout, scheduler, ...): not used by this model
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "unused"])
        width = hidden_sizes[0] if hidden_sizes else 64
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.GELU(), nn.Linear(width, num_outputs)
        )
        self.optimizer = optimizer  # a partial from the config (`_partial_: true`): called with the parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{split}/loss", F.cross_entropy(logits, y))
        self.log(f"{split}/acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())
