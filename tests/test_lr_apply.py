"""LRRangeTest(apply=True): the suggestion becomes the run's configured LR, the peak of a cyclical schedule.

For every kind of scheduler the run's LR is read where the optimizer uses it (at each training
batch), and compared with the suggestion: a cyclical schedule peaks at it (Smith; fastai's
``fit_one_cycle(lr_max=...)``), every other schedule starts or decays from it, a warmup rises to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.optim import lr_scheduler

from lightning_tricks import schedules
from lightning_tricks.callbacks.lr_range_test import LRRangeTest
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.functional.weight_decay import parameter_groups
from lightning_tricks.models import MLP

EPOCHS = 2


class ScheduledMLP(MLP):
    """An MLP whose ``configure_optimizers`` returns a per-step scheduler, as users write it.

    Two param groups (weights with decay, biases without) at different LRs: the ratio must survive.
    """

    def __init__(self, make_scheduler: Callable | None, lr: float = 3e-4) -> None:
        super().__init__(input_shape=(1, 8, 8), num_outputs=10)
        self.make_scheduler, self.lr = make_scheduler, lr

    def configure_optimizers(self):
        groups = parameter_groups(self, 1e-4)
        groups[1]["lr"] = self.lr / 2
        optimizer = torch.optim.AdamW(groups, lr=self.lr)
        if self.make_scheduler is None:
            return optimizer
        scheduler = self.make_scheduler(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TrainedLRs(Callback):
    """The LR of each param group at every training step, read where the optimizer step uses it."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append([float(g["lr"]) for g in trainer.optimizers[0].param_groups])


def fit(tmp_path: Path, make_scheduler: Callable | None) -> tuple[float, list[float], list[float]]:
    """The suggestion and the LRs the run trained at (first and second param group)."""
    pl.seed_everything(0, verbose=False)
    model, dm = ScheduledMLP(make_scheduler), DigitsDataModule(seed=0)
    callback, seen = LRRangeTest(num_steps=40, apply=True), TrainedLRs()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[callback, seen],
    )
    trainer.fit(model, datamodule=dm)
    assert callback.applied_lr == callback.result.suggestion
    return callback.result.suggestion, [lr[0] for lr in seen.lrs], [lr[1] for lr in seen.lrs]


def one_cycle(optimizer, total):
    return lr_scheduler.OneCycleLR(optimizer, max_lr=[1e-2, 5e-3], total_steps=total)


def warmup_then_cosine(optimizer, total):
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=10)
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - 10)
    return lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[10])


# name -> (scheduler factory, the run's LR (first group) as a function of the suggestion s and the step)
CASES: dict[str, tuple[Callable | None, Callable[[float, list[float]], None]]] = {}


def case(name: str, make_scheduler: Callable | None):
    def register(expect: Callable[[float, list[float]], None]):
        CASES[name] = (make_scheduler, expect)
        return expect

    return register


@case("plain", None)
def _plain(s: float, lrs: list[float]) -> None:
    assert lrs == pytest.approx([s] * len(lrs))


@case("StepLR", lambda opt, total: lr_scheduler.StepLR(opt, step_size=total // 2, gamma=0.1))
def _step(s: float, lrs: list[float]) -> None:
    half = len(lrs) // 2
    assert lrs == pytest.approx([s] * half + [s / 10] * (len(lrs) - half))


@case("CosineAnnealingLR", lambda opt, total: lr_scheduler.CosineAnnealingLR(opt, T_max=total))
def _cosine(s: float, lrs: list[float]) -> None:
    assert lrs[0] == pytest.approx(s) and max(lrs) == pytest.approx(s)
    assert lrs[len(lrs) // 2] == pytest.approx(s / 2, rel=0.05)  # the cosine's middle: half the base LR


@case("OneCycleLR", one_cycle)
def _one_cycle(s: float, lrs: list[float]) -> None:
    # The peak is the suggestion; the cycle starts at peak / div_factor (25), as configured. (Scaling the
    # cycle's start to the suggestion, as apply once did, put the peak at 25x the suggestion.)
    assert max(lrs) == pytest.approx(s, rel=0.01) and lrs[0] == pytest.approx(s / 25)


@case(
    "CyclicLR",
    lambda opt, total: lr_scheduler.CyclicLR(
        opt, base_lr=[1e-3, 5e-4], max_lr=[1e-2, 5e-3], step_size_up=total // 4, cycle_momentum=False
    ),
)
def _cyclic(s: float, lrs: list[float]) -> None:
    # The upper bound is the suggestion; the lower bound keeps its ratio (1e-3 / 1e-2).
    assert max(lrs) == pytest.approx(s) and min(lrs) == pytest.approx(s / 10)


@case("schedules.Cyclical", lambda opt, total: schedules.Cyclical(opt, max_lr=3e-3, stepsize=total // 4))
def _cyclical(s: float, lrs: list[float]) -> None:
    assert max(lrs) == pytest.approx(s) and min(lrs) == pytest.approx(s / 10)  # bounds 3e-4 .. 3e-3


@case("schedules.Fixed warmup", lambda opt, total: schedules.Fixed(opt, warmup_iters=10))
def _fixed_warmup(s: float, lrs: list[float]) -> None:
    assert lrs[0] == pytest.approx(0.1 * s) and lrs[10:] == pytest.approx([s] * (len(lrs) - 10))


@case("schedules.Step warmup", lambda opt, total: schedules.Step(opt, stepsize=total // 2, gamma=0.5, warmup_iters=5))
def _step_warmup(s: float, lrs: list[float]) -> None:
    half = len(lrs) // 2
    assert max(lrs) == pytest.approx(s) and lrs[5:half] == pytest.approx([s] * (half - 5))
    assert lrs[half:] == pytest.approx([s / 2] * (len(lrs) - half))


@case("LinearLR warmup then cosine (SequentialLR)", warmup_then_cosine)
def _sequential(s: float, lrs: list[float]) -> None:
    # After the warmup the cosine restarts from its own base LR: it must be the suggestion too.
    assert lrs[0] == pytest.approx(0.1 * s) and lrs[10] == pytest.approx(s) and max(lrs) == pytest.approx(s)


@pytest.mark.parametrize("name", list(CASES))
def test_the_suggestion_is_the_lr_the_run_is_configured_with(tmp_path: Path, name: str) -> None:
    make_scheduler, expect = CASES[name]
    suggestion, first, second = fit(tmp_path, make_scheduler)
    assert suggestion != pytest.approx(3e-4)  # the comparison below could fail: the LR did change
    expect(suggestion, first)
    # The second param group keeps its configured ratio to the first (1/2) at every step.
    assert second == pytest.approx([lr / 2 for lr in first])


class InputIgnored(MLP):
    """Its output never depends on the input, so the range test's loss has nothing to fall to."""

    def forward(self, x):
        return self.net(torch.zeros_like(x))


def test_a_curve_that_never_falls_suggests_nothing_and_applies_nothing(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(seed=0)
    flat = LRRangeTest(num_steps=40, apply=True)
    seen = TrainedLRs()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=0, limit_train_batches=3, default_root_dir=tmp_path,
        callbacks=[flat, seen],
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"never fell clearly .* Widen the range .* more steps .* Nothing applied"):
        trainer.fit(InputIgnored(input_shape=(1, 8, 8), num_outputs=10), datamodule=dm)
    assert not flat.result.clear_descent and flat.result.descent < 0.05 and flat.applied_lr is None
    assert [lr[0] for lr in seen.lrs] == pytest.approx([3e-4] * 3)  # the configured LR, untouched
    # The same sweep on a model that learns falls by far more than the 5% it takes.
    _, lrs, _ = fit(tmp_path, None)
    assert lrs[0] != pytest.approx(3e-4)
