"""The training loop shared by the reference models: loss by task, accuracy, injected optimizer."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_tricks.functional.weight_decay import check_weight_decay, parameter_groups
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.protocol import TrickModule, check_task

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
    ``task`` come from the data module. The scheduler is stepped per its
    factory's ``interval`` (:func:`scheduler_interval`), and a ``max_iter=None``
    bound in the factory is filled in with the run's length.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        task: str = "multiclass",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float | None = None,
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
        # None: the optimizer's own weight_decay on every parameter. A number: that decay on the weights
        # only, none on biases and normalisation parameters (parameter_groups; pair it with AdamW).
        self.weight_decay = None if weight_decay is None else check_weight_decay(weight_decay)
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
        # The loss is the mean over ranks (sync_dist), for the epoch and each step: one scalar all-reduce a
        # step under DDP, and the epoch's training loss is all the data's, not rank 0's share.
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/{self.metric_name}", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        params = self.parameters() if self.weight_decay is None else parameter_groups(self, self.weight_decay)
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        factory, interval = self.scheduler_factory, scheduler_interval(self.scheduler_factory)
        # `max_iter: null` in a config means "the whole run", which only the Trainer knows.
        if isinstance(factory, partial) and "max_iter" in factory.keywords and factory.keywords["max_iter"] is None:
            factory = partial(factory, max_iter=self._run_length(interval))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": factory(optimizer), "interval": interval}}

    def _run_length(self, interval: str) -> int:
        """The run's length in scheduler iterations: optimizer steps or epochs."""
        length = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
        if length is None or length < 1 or not math.isfinite(length):
            limit = "max_steps or max_epochs" if interval == "step" else "max_epochs"
            raise ValueError(
                f"The scheduler's `max_iter=None` needs the run's length, but the Trainer's is {length!r}: "
                f"set the Trainer's {limit}, or the scheduler's `max_iter`."
            )
        return int(length)


def scheduler_interval(factory: SchedulerFactory) -> str:
    """What one scheduler iteration is for Lightning: the factory's ``interval`` argument, else ``"epoch"``.

    The schedulers in ``lightning_tricks.schedules`` carry their unit (``interval="step"`` by
    default, Caffe's iteration), so ``stepsize`` and the unit it counts in live in one config;
    torch's own schedulers have no such argument and keep Lightning's default, per epoch.

    >>> from lightning_tricks.schedules import Step
    >>> scheduler_interval(partial(Step, stepsize=10)), scheduler_interval(partial(Step, stepsize=1, interval="epoch"))
    ('step', 'epoch')
    >>> scheduler_interval(partial(torch.optim.lr_scheduler.StepLR, step_size=10))
    'epoch'
    """
    # LightningCLI (jsonargparse) builds a partial of a wrapper whose signature is (*args, **kwargs),
    # with every argument, defaults included, in its keywords; Hydra's partial binds only the YAML's keys.
    if isinstance(factory, partial) and "interval" in factory.keywords:
        return factory.keywords["interval"]
    try:
        parameter = inspect.signature(factory).parameters.get("interval")
    except (TypeError, ValueError):  # a callable without a signature
        return "epoch"
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return "epoch"
    return parameter.default


def flat_size(shape: Sequence[int]) -> int:
    return math.prod(shape)
