"""Checks that train a copy train at the LR the user configured, whatever the scheduler, per param group.

A scheduler moves the optimizer's LR when it is built (OneCycleLR starts at max_lr / 25), so an
optimizer fresh from ``configure_optimizers`` holds the schedule's start, not the user's LR.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks import InputIndependentBaseline, OverfitBatchCheck, run_preflight
from lightning_tricks.callbacks.lr_range_test import lr_range_test
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.utilities.isolation import configured_lrs, fresh_optimizer
from lightning_tricks.utilities.protocol import AdapterError

MAX_LRS = [1e-3, 3e-3]  # the body's and the head's LR, as configured


class RecordingAdam(torch.optim.Adam):
    """The user's optimizer; it notes the LR of each param group at every step it takes."""

    def __init__(self, params, steps: list, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.steps = steps

    def step(self, closure=None):
        self.steps.append((self, [float(g["lr"]) for g in self.param_groups]))
        return super().step(closure)


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int) -> lr_scheduler.LRScheduler:
    return lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LRS, total_steps=total_steps)


class TwoGroupNet(pl.LightningModule):
    """Body and head in two param groups; ``schedule`` is built as Lightning tutorials build OneCycleLR:
    sized from ``trainer.estimated_stepping_batches`` (unless ``total_steps`` is given) and stepped every batch."""

    def __init__(self, schedule: Callable | None = one_cycle, total_steps: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.criterion = nn.CrossEntropyLoss()
        self.schedule, self.total_steps, self.steps = schedule, total_steps, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        return self.criterion(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.criterion(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        groups = [
            {"params": self.body.parameters(), "lr": MAX_LRS[0]},
            {"params": self.head.parameters(), "lr": MAX_LRS[1]},
        ]
        optimizer = RecordingAdam(groups, steps=self.steps)
        if self.schedule is None:
            return optimizer
        scheduler = self.schedule(optimizer, self.total_steps or self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


SCHEDULES = {
    "none": None,
    "one_cycle": one_cycle,
    # CyclicLR overwrites the optimizer's lr with base_lr; its peak is max_lr.
    "cyclic": lambda opt, n: lr_scheduler.CyclicLR(opt, base_lr=[m / 10 for m in MAX_LRS], max_lr=MAX_LRS),
    # A warmup starts below the optimizer's lr, a LambdaLR warmup at 0.
    "linear_warmup": lambda opt, n: lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=n),
    "lambda_warmup": lambda opt, n: lr_scheduler.LambdaLR(opt, lambda step: min(1.0, step / 100)),
    "warmup_then_cosine": lambda opt, n: lr_scheduler.SequentialLR(
        opt,
        [lr_scheduler.LinearLR(opt, 0.1, total_iters=5), lr_scheduler.CosineAnnealingLR(opt, T_max=n)],
        milestones=[5],
    ),
    "plateau": lambda opt, n: lr_scheduler.ReduceLROnPlateau(opt),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_a_fresh_optimizer_starts_every_group_at_its_configured_lr(name: str) -> None:
    optimizer = fresh_optimizer(TwoGroupNet(SCHEDULES[name], total_steps=100))
    assert [g["lr"] for g in optimizer.param_groups] == MAX_LRS


def test_configured_lrs_reads_the_peak_of_a_one_cycle() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5, momentum=0.9)
    lr_scheduler.OneCycleLR(optimizer, max_lr=0.3, total_steps=10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.3 / 25)  # where OneCycle starts
    assert configured_lrs(optimizer) == [0.3]


def test_checks_train_at_the_configured_lr_of_each_group_while_the_run_follows_its_schedule() -> None:
    model = TwoGroupNet(one_cycle)
    checks = [
        OverfitBatchCheck(max_steps=5, lr_factors=[], on_failure="ignore"),  # only the configured LRs
        InputIndependentBaseline(steps=5, train_batches=2, val_batches=1, on_failure="ignore"),
    ]
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_val_batches=0, callbacks=checks,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule(seed=0))
    run_optimizer = trainer.optimizers[0]
    check_steps = [lrs for optimizer, lrs in model.steps if optimizer is not run_optimizer]
    run_steps = [lrs for optimizer, lrs in model.steps if optimizer is run_optimizer]
    assert len(check_steps) == 5 + 2 * 5  # the overfit check, then the baseline's two trainings
    assert all(lrs == MAX_LRS for lrs in check_steps)  # exactly the configured LRs, every step
    # The run itself is untouched: it starts where OneCycle starts, max_lr / div_factor.
    assert run_steps[0] == pytest.approx([m / 25 for m in MAX_LRS])


def test_preflight_runs_configure_optimizers_as_the_run_does_and_a_clean_model_passes() -> None:
    # OneCycleLR(total_steps=trainer.estimated_stepping_batches) failed with "Expected positive integer
    # total_steps, but got 0" when preflight stopped the run with max_steps=0.
    model = TwoGroupNet(one_cycle)
    report = run_preflight(model, DigitsDataModule(seed=0))
    assert all(r.verdict == "pass" for r in report.results), report.to_markdown()  # not even inconclusive
    assert model.steps and all(lrs == MAX_LRS for _, lrs in model.steps)  # only checks stepped: no training step


def test_preflight_passes_the_run_length_on(tmp_path) -> None:
    lengths = []

    class Sized(TwoGroupNet):
        def configure_optimizers(self):
            lengths.append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()

    data = DigitsDataModule(seed=0, batch_size=64)
    run_preflight(Sized(), data, checks=[OverfitBatchCheck(max_steps=2, on_failure="ignore")], max_epochs=3)
    steps_per_epoch = len(data.train_dataloader())
    assert lengths and set(lengths) == {3 * steps_per_epoch}


def test_a_configure_optimizers_that_fails_is_a_clear_error() -> None:
    # Not attached to a Trainer, the OneCycle module cannot size its schedule.
    with pytest.raises(
        AdapterError, match=r"OverfitBatchCheck: TwoGroupNet.configure_optimizers\(\) failed .*`optimizer=`"
    ):
        fresh_optimizer(TwoGroupNet(one_cycle), owner="OverfitBatchCheck")
    factory = partial(torch.optim.SGD, lr=0.1)  # the way out the message names
    assert fresh_optimizer(TwoGroupNet(one_cycle), factory).param_groups[0]["lr"] == 0.1


class SweptSGD(torch.optim.SGD):
    """Plain SGD that notes every step's LRs (class-wide: the range test builds its own copy of it)."""

    seen: list[list[float]] = []

    def step(self, closure=None):
        SweptSGD.seen.append([float(g["lr"]) for g in self.param_groups])
        return super().step(closure)


def test_the_range_test_sweeps_param_groups_at_their_configured_ratio() -> None:
    # A warmup from 0 (a common LambdaLR) leaves every group at lr 0: the groups' ratio is in initial_lr only.
    model = TwoGroupNet(schedule=None)
    optimizer = SweptSGD(
        [{"params": model.body.parameters(), "lr": 1e-3}, {"params": model.head.parameters(), "lr": 1e-2}]
    )
    lr_scheduler.LambdaLR(optimizer, lambda step: step / 100)
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.0]
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    SweptSGD.seen.clear()
    lr_range_test(model, DataLoader(TensorDataset(x, y), batch_size=16), optimizer, num_steps=5, diverge_factor=None)
    assert len(SweptSGD.seen) == 5
    assert all(head == pytest.approx(10 * body) for body, head in SweptSGD.seen)
