"""The training loop shared by the reference models: loss by task, accuracy, injected optimizer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_tricks.arguments import check_int
from lightning_tricks.protocol import TrickModule, check_task

# Lightning's aliases: jsonargparse (LightningCLI) can build these from a class path + init_args,
# and Hydra passes them as `_partial_: true` configs.
OptimizerFactory = OptimizerCallable
SchedulerFactory = LRSchedulerCallable

_CRITERIA = {
    "multiclass": nn.CrossEntropyLoss,
    "binary": nn.BCEWithLogitsLoss,
    "multilabel": nn.BCEWithLogitsLoss,
    "regression": nn.MSELoss,
}


def check_optimizer(optimizer: OptimizerFactory) -> OptimizerFactory:
    """Build the optimizer once on a dummy parameter, so a bad argument (``lr=-1``) fails now, not after set-up."""
    if not callable(optimizer):
        raise ValueError(f"`optimizer` must be a callable taking parameters (a partial), got {optimizer!r}.")
    try:
        optimizer([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        args = getattr(optimizer, "keywords", {})
        name = getattr(getattr(optimizer, "func", optimizer), "__name__", repr(optimizer))
        raise ValueError(f"`optimizer` {name}({args}) is invalid: {err}") from err
    return optimizer


class ReferenceModule(TrickModule, pl.LightningModule):
    """A small, correct training loop around ``self.net`` for every task; subclasses build the net.

    The optimizer and scheduler are injected (Hydra ``_partial_: true``), Adam
    at 3e-4 by default (recipe 3.2). ``input_shape``, ``num_outputs`` and
    ``task`` come from the data module.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        task: str = "multiclass",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.task = check_task(task)
        check_int(num_outputs, "num_outputs")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_outputs = num_outputs
        self.num_classes = num_outputs if self.task in ("multiclass", "multilabel") else None
        if self.task == "binary" and num_outputs != 1:
            raise ValueError(f"`task='binary'` needs one output (a logit), got num_outputs={num_outputs}.")
        self.optimizer_factory = check_optimizer(optimizer or partial(torch.optim.Adam, lr=3e-4))
        self.scheduler_factory = scheduler
        self.criterion = _CRITERIA[self.task]()
        self.metrics = nn.ModuleDict({f"{stage}_metric": self._make_metric() for stage in ("train", "val", "test")})
        self.example_input_array = torch.zeros(2, *self.input_shape)

    def _make_metric(self) -> torchmetrics.Metric:
        if self.task == "multiclass":
            return torchmetrics.Accuracy(task="multiclass", num_classes=self.num_outputs)
        if self.task == "binary":
            return torchmetrics.Accuracy(task="binary")
        if self.task == "multilabel":
            return torchmetrics.Accuracy(task="multilabel", num_labels=self.num_outputs)
        return torchmetrics.MeanAbsoluteError()

    @property
    def metric_name(self) -> str:
        return "mae" if self.task == "regression" else "acc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task == "binary":
            outputs = outputs.squeeze(-1)  # one logit per sample, targets are (N,)
        return self.criterion(outputs, targets)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        inputs, targets = self.split_batch(batch)
        outputs = self(inputs)
        loss = self.compute_loss(outputs, targets)
        metric = self.metrics[f"{stage}_metric"]
        if self.task == "binary":
            metric(outputs.squeeze(-1), targets.long())
        elif self.task == "multilabel":
            metric(outputs, targets.long())
        else:
            metric(outputs, targets)
        on_step = stage == "train"
        # Evaluation metrics are reduced across ranks (sync_dist); training ones are rank 0's.
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step)
        self.log(f"{stage}/{self.metric_name}", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}


def flat_size(shape: Sequence[int]) -> int:
    return math.prod(shape)
