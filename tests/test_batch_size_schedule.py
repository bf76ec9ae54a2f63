"""Recipe 3.6-3.7 — BatchSizeSchedule: the batch really grows at the milestones, on resume and on 2 ranks."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.callbacks.batch_size_schedule import BatchSizeSchedule
from lightning_tricks.testing import run_ddp


class Data(pl.LightningDataModule):
    """``samples`` random points; counts how often the training loader is built."""

    def __init__(self, samples: int = 200, batch_size: int = 16, validation: bool = True) -> None:
        super().__init__()
        self.samples, self.batch_size, self.builds = samples, batch_size, 0
        generator = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(samples, 4, generator=generator), torch.arange(samples) % 2)
        if validation:
            self.val_dataloader = lambda: DataLoader(self.data, batch_size=50)

    def train_dataloader(self) -> DataLoader:
        self.builds += 1
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net, self.lr = nn.Linear(4, 2), lr

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Observed(Callback):
    """Per epoch: the sizes of the batches the model was fed, optimizer steps taken, and the LR."""

    def __init__(self) -> None:
        self.sizes: dict[int, list[int]] = {}
        self.steps: dict[int, int] = {}
        self.lrs: dict[int, float] = {}
        self._start: int | None = None  # None: resumed at an epoch's end, no on_train_epoch_start

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = trainer.global_step
        self.lrs[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sizes.setdefault(trainer.current_epoch, []).append(len(batch[0]))

    def on_train_epoch_end(self, trainer, pl_module):
        if self._start is not None:
            self.steps[trainer.current_epoch] = trainer.global_step - self._start
        self._start = None

    def batch_per_epoch(self) -> list[int]:
        return [max(sizes) for _, sizes in sorted(self.sizes.items())]


def fit(schedule: BatchSizeSchedule, epochs: int, data: Data | None = None, model=None, **kwargs):
    observed = Observed()
    ckpt_path = kwargs.pop("ckpt_path", None)
    kwargs = {"logger": False, "enable_checkpointing": False, **kwargs}
    callbacks = [schedule, observed, *kwargs.pop("callbacks", [])]
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=epochs, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip
    trainer.fit(model or Classifier(), datamodule=data, ckpt_path=ckpt_path)
    return trainer, observed


def test_batch_grows_exactly_at_the_milestones_and_steps_follow() -> None:
    data = Data(samples=200, batch_size=16)
    schedule = BatchSizeSchedule(milestones=[2, 4], factor=2)
    trainer, observed = fit(schedule, 5, data)
    assert observed.batch_per_epoch() == [16, 16, 32, 32, 64]
    for epoch, batch in enumerate([16, 16, 32, 32, 64]):
        # every batch full but the last one, which holds the remainder: N samples each epoch
        sizes = observed.sizes[epoch]
        assert sizes[:-1] == [batch] * (len(sizes) - 1) and sum(sizes) == 200
        assert observed.steps[epoch] == math.ceil(200 / batch)
    assert schedule.batch_size == data.batch_size == 64 and schedule.passed == 2
    assert data.builds == 3  # the initial loader and one per milestone, not one per epoch
    assert trainer.reload_dataloaders_every_n_epochs == 0  # the user's setting is back


class OwnLoader(Classifier):
    """The batch size lives on the module (``self.hparams``), the loader is the module's."""

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self):
        return DataLoader(Data(samples=64).data, batch_size=self.hparams.batch_size)


def test_the_attribute_is_found_on_the_module_hparams_and_factor_three() -> None:
    schedule = BatchSizeSchedule(milestones=[1], factor=3)
    _, observed = fit(schedule, 3, model=OwnLoader(batch_size=8))
    assert observed.batch_per_epoch() == [8, 24, 24] and [observed.steps[e] for e in range(3)] == [8, 3, 3]


@pytest.mark.parametrize(("rule", "growth"), [("linear", 2.0), ("sqrt", math.sqrt(2))])
def test_scale_lr_multiplies_the_lr_by_the_rule_at_each_growth(rule: str, growth: float) -> None:
    schedule = BatchSizeSchedule(milestones=[1, 3], scale_lr=rule)
    _, observed = fit(schedule, 4, Data(samples=64), model=Classifier(lr=0.1))
    assert [observed.lrs[e] for e in range(4)] == pytest.approx([0.1, 0.1 * growth, 0.1 * growth, 0.1 * growth**2])
    _, plain = fit(BatchSizeSchedule(milestones=[1, 3]), 4, Data(samples=64), model=Classifier(lr=0.1))
    assert [plain.lrs[e] for e in range(4)] == [0.1] * 4  # without scale_lr the LR is left alone


@pytest.mark.parametrize("validation", [True, False], ids=["saved_on_validation_end", "saved_on_train_epoch_end"])
def test_resume_starts_with_the_grown_batch_and_lr_and_does_not_grow_twice(tmp_path: Path, validation: bool) -> None:
    # Saved on `on_validation_end`, the checkpoint predates epoch 1's `on_train_epoch_end` (the growth):
    # Lightning resumes at the end of epoch 1, which must still have epoch 1's loader (a 32-batch loader
    # there makes Lightning train an extra batch), and the growth happens then.
    def run(epochs: int, **kwargs):
        schedule = BatchSizeSchedule(milestones=[2, 4], scale_lr="linear")
        _, observed = fit(schedule, epochs, Data(batch_size=16, validation=validation), **kwargs)
        return schedule, observed

    _, whole = run(5)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_on_train_epoch_end=not validation)
    run(2, callbacks=[checkpoint], enable_checkpointing=True)  # "killed" after epoch 1: epoch 2 is a milestone
    schedule, resumed = run(5, ckpt_path=tmp_path / "last.ckpt")
    assert sorted(resumed.sizes) == [2, 3, 4]
    assert resumed.batch_per_epoch() == whole.batch_per_epoch()[2:] == [32, 32, 64]
    assert [resumed.lrs[e] for e in (2, 3, 4)] == pytest.approx([whole.lrs[e] for e in (2, 3, 4)]) == [0.2, 0.2, 0.4]
    assert schedule.batch_size == 64 and schedule.passed == 2


def batches_on_two_ranks(devices: int) -> dict:
    schedule, observed = BatchSizeSchedule(milestones=[1, 2]), Observed()
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp", max_epochs=3, callbacks=[schedule, observed],
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(Classifier(), datamodule=Data(samples=200, batch_size=16, validation=False))
    return {"batches": observed.batch_per_epoch(), "steps": [observed.steps[e] for e in range(3)]}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_each_grow_their_per_device_batch() -> None:
    for result in run_ddp(batches_on_two_ranks, devices=2, timeout=240):
        assert result["batches"] == [16, 32, 64]
        assert result["steps"] == [math.ceil(200 / (b * 2)) for b in (16, 32, 64)] == [7, 4, 2]


def test_a_batch_larger_than_the_data_set_warns_but_trains() -> None:
    with pytest.warns(UserWarning, match=r"global batch 64 \(64 per device x 1\) exceeds the 40 training samples"):
        _, observed = fit(BatchSizeSchedule(milestones=[1, 2]), 3, Data(samples=40, validation=False))
    assert observed.sizes[2] == [40]


class FixedBatch(Data):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=16)  # ignores self.batch_size


def test_a_loader_that_ignores_the_attribute_is_flagged() -> None:
    with pytest.warns(UserWarning, match=r"`batch_size` is 32 but the rebuilt training loader batches 16"):
        fit(BatchSizeSchedule(milestones=[1]), 2, FixedBatch(validation=False))


def test_a_missing_attribute_fails_in_setup_naming_attr_name() -> None:
    with pytest.raises(AttributeError, match=r"no `bs` \(attr_name='bs'\) on the LightningModule \(Classifier\).*Data"):
        fit(BatchSizeSchedule(milestones=[1], attr_name="bs"), 1, Data())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"milestones": [3, 2]}, r"`milestones` must be a non-empty list of strictly increasing epochs >= 1"),
        ({"milestones": [2, 2]}, r"`milestones` .* got \[2, 2\]"),
        ({"milestones": []}, r"`milestones` .* got \[\]"),
        ({"milestones": [0, 3]}, r"`milestones` .* got \[0, 3\]"),
        ({"milestones": "3"}, r"`milestones` .* got '3'"),
        ({"factor": 1}, r"`factor` must be an integer >= 2, got 1"),
        ({"factor": 1.5}, r"`factor` must be an integer >= 2, got 1.5"),
        ({"scale_lr": "cubic"}, r"`scale_lr` must be one of 'linear', 'sqrt', got 'cubic'"),
        ({"attr_name": ""}, r"`attr_name` must be an attribute name, got ''"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="BatchSizeSchedule: " + message):
        BatchSizeSchedule(**{"milestones": [2], **kwargs})
