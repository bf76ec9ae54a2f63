"""Recipe 3.7 — LRBatchScaling: scaled LR = base x B/B_ref (or x sqrt), with B the effective global batch.

The toy module's loss is ``sum(w)``: the gradient is exactly 1, so one SGD step moves each weight
by exactly the LR the optimizer used (Adam: by the LR / (1 + eps)). Tests read that LR from the
weights, not from the param groups: a warmup that did not reach the update would be caught.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.callbacks.lr_batch_scaling import LRBatchScaling
from lightning_tricks.functional.lr_scaling import lr_scale_factor, scale_lr, scaling_warmup_factor
from lightning_tricks.testing import run_ddp


class SumOfWeights(pl.LightningModule):
    """loss = sum(a) + sum(b): constant unit gradients, so each step's displacement is the LR used."""

    def __init__(
        self, lr: float = 1e-3, batch_size: int = 32, samples: int = 256, optimizer: str = "sgd",
        second_group_lr: float | None = None, step_lr: tuple[int, float] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3))
        self.b = nn.Parameter(torch.zeros(2))
        self.lr, self.batch_size, self.samples = lr, batch_size, samples
        self.optimizer, self.second_group_lr, self.step_lr = optimizer, second_group_lr, step_lr

    def training_step(self, batch, batch_idx):
        return self.a.sum() + self.b.sum() + 0 * batch[0].sum()

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(self.samples, 1)), batch_size=self.batch_size)

    def configure_optimizers(self):
        groups = [{"params": [self.a]}, {"params": [self.b], "lr": self.second_group_lr or self.lr}]
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD
        optimizer = cls(groups, lr=self.lr)
        if self.step_lr is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step_lr[0], gamma=self.step_lr[1])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class StepLRs(Callback):
    """The LR each optimizer step really used (displacement of `a`) and the param groups' LRs before it."""

    def __init__(self) -> None:
        self.used: list[float] = []
        self.group_lrs: list[list[float]] = []
        self._before: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = pl_module.a.detach()[0].clone()
        self.group_lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.used.append(float(self._before - pl_module.a.detach()[0]))


def fit(model: SumOfWeights, scaling: LRBatchScaling, steps: int, tmp_path: Path | None = None, **kwargs):
    recorder = StepLRs()
    ckpt_path = kwargs.pop("ckpt_path", None)
    kwargs = {"logger": False, "enable_checkpointing": False, **kwargs}
    callbacks = [scaling, recorder, *kwargs.pop("callbacks", [])]
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, recorder


@pytest.mark.parametrize(("rule", "expected"), [("linear", 2e-3), ("sqrt", 1e-3 * math.sqrt(2))])
def test_adam_lr_equals_the_closed_form(rule: str, expected: float, tmp_path: Path) -> None:
    scaling = LRBatchScaling(reference_batch_size=16, rule=rule)
    logger = CSVLogger(tmp_path, name="csv", version="")
    trainer, recorder = fit(SumOfWeights(lr=1e-3, optimizer="adam"), scaling, 3, tmp_path, logger=logger)
    assert scaling.factor == pytest.approx(expected / 1e-3) and scaling.effective_batch_size == 32
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx([expected, expected], rel=1e-12)
    # Adam with a constant unit gradient steps by lr / (1 + eps): the scaled LR is the one used
    assert recorder.used == pytest.approx([expected] * 3, rel=1e-6)
    trainer.logger.save()
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    logged = {k: float(v) for row in rows for k, v in row.items() if k.startswith("tricks/") and v}
    assert logged == pytest.approx(
        {"tricks/lr_scaling/factor": expected / 1e-3, "tricks/lr_scaling/effective_batch_size": 32.0,
         "tricks/lr_scaling/lr": expected}
    )  # fmt: skip


def test_gradient_accumulation_counts_in_the_effective_batch() -> None:
    scaling = LRBatchScaling(reference_batch_size=16)
    trainer, _ = fit(SumOfWeights(lr=1e-3), scaling, 2, accumulate_grad_batches=4)
    assert scaling.effective_batch_size == 128 and scaling.factor == 8.0
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(8e-3, rel=1e-12)


def test_param_groups_keep_their_ratio() -> None:
    trainer, _ = fit(SumOfWeights(lr=1e-3, second_group_lr=1e-4), LRBatchScaling(reference_batch_size=8), 1)
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx([4e-3, 4e-4], rel=1e-12)


def test_a_scheduler_follows_the_scaled_lr() -> None:
    model = SumOfWeights(lr=0.1, step_lr=(2, 0.1))
    trainer, recorder = fit(model, LRBatchScaling(reference_batch_size=16), 6)
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == pytest.approx([0.2, 0.2])
    assert recorder.used == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002, 0.002], rel=1e-5)


def expected_warmup(steps: int, scaled: float, factor: float, warmup: int, step_lr=None) -> list[float]:
    decay = [step_lr[1] ** (s // step_lr[0]) if step_lr else 1.0 for s in range(steps)]
    ramp = [1 / factor + (1 - 1 / factor) * s / warmup if s < warmup else 1.0 for s in range(steps)]  # Goyal et al.
    return [scaled * decay[s] * ramp[s] for s in range(steps)]


@pytest.mark.parametrize("step_lr", [None, (3, 0.5)])
def test_warmup_ramps_from_the_base_lr_to_the_scaled_lr(step_lr) -> None:
    # batch 64, reference 8: factor 8, base LR 0.1 -> scaled 0.8, reached after T = 4 steps
    model = SumOfWeights(lr=0.1, batch_size=64, samples=640, step_lr=step_lr)
    _, recorder = fit(model, LRBatchScaling(reference_batch_size=8, warmup_steps=4), 8)
    decay = [step_lr[1] ** (s // step_lr[0]) if step_lr else 1.0 for s in range(8)]
    assert recorder.used[0] == pytest.approx(0.1, rel=1e-5)  # step 0: the unscaled base LR
    assert recorder.used[2] == pytest.approx(0.8 * decay[2] * (1 / 8 + 7 / 8 * 0.5), rel=1e-5)  # T/2
    assert recorder.used[4:] == pytest.approx([0.8 * d for d in decay[4:]], rel=1e-5)  # T and after
    assert recorder.used == pytest.approx(expected_warmup(8, 0.8, 8.0, 4, step_lr), rel=1e-5)
    # the groups (what schedulers read and LearningRateMonitor logs) hold the unwarmed scheduler LR
    assert [lrs[0] for lrs in recorder.group_lrs] == pytest.approx([0.8 * d for d in decay], rel=1e-6)


def test_warmup_hooks_are_removed_at_teardown() -> None:
    trainer, recorder = fit(SumOfWeights(lr=0.1, batch_size=64, samples=640), LRBatchScaling(8, warmup_steps=4), 2)
    assert recorder.used == pytest.approx([0.1, 0.1 * 8 * (1 / 8 + (7 / 8) * 1 / 4)], rel=1e-5)
    model, optimizer = trainer.lightning_module, trainer.optimizers[0]
    before = model.a.detach()[0].clone()
    optimizer.zero_grad()
    model.training_step((torch.zeros(1, 1),), 0).backward()
    optimizer.step()  # mid-warmup, but the fit is over: a plain step at the group's LR
    assert float(before - model.a.detach()[0]) == pytest.approx(0.8, rel=1e-6)


def test_resume_neither_rescales_nor_restarts_the_warmup(tmp_path: Path) -> None:
    # one batch per epoch: a checkpoint at each epoch's end; warmup 4 steps, StepLR halving every 3
    def model():
        torch.manual_seed(0)
        return SumOfWeights(lr=0.1, batch_size=64, samples=64, step_lr=(3, 0.5))

    _, whole = fit(model(), LRBatchScaling(8, warmup_steps=4), 8)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = LRBatchScaling(8, warmup_steps=4)
    killed, before = fit(model(), first, 3, tmp_path, callbacks=[checkpoint], enable_checkpointing=True)
    lr_at_kill = killed.optimizers[0].param_groups[0]["lr"]
    resumed_scaling = LRBatchScaling(8, warmup_steps=4)
    _, after = fit(model(), resumed_scaling, 8, tmp_path, ckpt_path=tmp_path / "last.ckpt")
    assert resumed_scaling.factor == 8.0  # from the checkpoint's state, not recomputed and applied
    assert after.group_lrs[0][0] == pytest.approx(lr_at_kill, rel=1e-12)
    assert before.used + after.used == pytest.approx(whole.used, rel=1e-5)
    assert whole.used == pytest.approx(expected_warmup(8, 0.8, 8.0, 4, (3, 0.5)), rel=1e-5)


def lrs_on_two_ranks(devices: int) -> dict:
    model = SumOfWeights(lr=0.05, batch_size=16, samples=128)
    scaling, recorder = LRBatchScaling(reference_batch_size=16), StepLRs()
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp", max_steps=3, callbacks=[scaling, recorder],
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model)
    return {"factor": scaling.factor, "batch": scaling.effective_batch_size, "used": recorder.used}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_double_the_lr_on_both() -> None:
    for result in run_ddp(lrs_on_two_ranks, devices=2, timeout=240):
        assert result["factor"] == 2.0 and result["batch"] == 32
        assert result["used"] == pytest.approx([0.1] * 3, rel=1e-5)


class UnbatchedLoader(SumOfWeights):
    def train_dataloader(self):
        # a data set that yields whole batches itself: the loader has no batch size to read
        return DataLoader(TensorDataset(torch.zeros(8, 4, 1)), batch_size=None)


def test_an_unreadable_batch_size_names_the_override() -> None:
    with pytest.raises(ValueError, match=r"cannot read the per-device batch size .*pass `batch_size=`"):
        fit(UnbatchedLoader(lr=0.1), LRBatchScaling(reference_batch_size=2), 1)
    trainer, _ = fit(UnbatchedLoader(lr=0.1), LRBatchScaling(reference_batch_size=2, batch_size=4), 1)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "square"}, r"`rule` must be one of 'linear', 'sqrt', got 'square'"),
        ({"reference_batch_size": 0}, r"`reference_batch_size` must be an integer >= 1, got 0"),
        ({"reference_batch_size": 16.0}, r"`reference_batch_size` must be an integer >= 1, got 16.0"),
        ({"warmup_steps": -1}, r"`warmup_steps` must be an integer >= 0, got -1"),
        ({"batch_size": 0}, r"`batch_size` must be None or an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="LRBatchScaling: " + message):
        LRBatchScaling(**{"reference_batch_size": 16, **kwargs})


def test_functional_closed_forms() -> None:
    assert scale_lr(1e-3, 32, 16) == pytest.approx(2e-3) and lr_scale_factor(64, 16, "sqrt") == 2.0
    assert lr_scale_factor(8, 16) == 0.5  # a smaller batch scales down
    assert scaling_warmup_factor(0, 10, 4.0) == 0.25 and scaling_warmup_factor(5, 10, 4.0) == 0.625
    assert scaling_warmup_factor(10, 10, 4.0) == 1.0 and scaling_warmup_factor(3, 0, 4.0) == 1.0
