"""Two instances of one stateful callback share a Trainer, and each gets its own state back on resume.

Lightning stores a callback's state under its ``state_key`` and refuses two stateful callbacks with
one key; every stateful callback of ours builds its key from its distinguishing arguments.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_tricks.callbacks
from lightning_tricks.callbacks import (
    ActivationStats,
    BatchSizeSchedule,
    DataInspection,
    EarlyStopping,
    FullDatasetLoss,
    LastLayerBiasInit,
    LRBatchScaling,
    LRRangeTest,
    PredictionDynamics,
    SeedEverything,
    VisualizeBatch,
)

# For each stateful callback: two argument sets that make two instances keep different states.
PAIRS: dict[type[Callback], tuple[dict[str, Any], dict[str, Any]]] = {
    ActivationStats: ({"every_n_steps": 1}, {"every_n_steps": 3}),
    # Two schedules grow two attributes; the second's milestone is after the run, so its loader is never rebuilt.
    BatchSizeSchedule: ({"milestones": [1]}, {"milestones": [5], "attr_name": "val_batch_size"}),
    DataInspection: ({"splits": ["train"], "at_fit_start": False}, {"splits": ["val"], "at_fit_start": False}),
    EarlyStopping: ({"monitor": "val/loss", "patience": 10}, {"monitor": "train/loss", "patience": 10}),
    FullDatasetLoss: ({"splits": ["val"]}, {"splits": ["train"]}),
    LastLayerBiasInit: ({"max_batches": 1}, {"max_batches": 2}),
    LRBatchScaling: ({"reference_batch_size": 8}, {"reference_batch_size": 32}),
    LRRangeTest: ({"num_steps": 5}, {"num_steps": 8}),
    PredictionDynamics: ({"num_samples": 2}, {"num_samples": 3}),
    VisualizeBatch: ({"num_batches": 1}, {"num_batches": 2}),
}

# Stateful callbacks of which one Trainer holds one, keyed by their class name, with the reason.
ONE_PER_TRAINER = {
    # A process has one global RNG: a second seeder would overwrite the first's seeds and restored states.
    # Resuming with another seed restores the checkpoint's RNG (with a warning), so the seed is no key either.
    SeedEverything: {"seed": 1},
}


def stateful_callback_classes() -> set[type[Callback]]:
    """Every callback class defined in lightning_tricks.callbacks (any module) that has checkpointed state."""
    found = set()
    for info in pkgutil.iter_modules(lightning_tricks.callbacks.__path__):
        module = importlib.import_module(f"lightning_tricks.callbacks.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                cls.__module__ == module.__name__
                and issubclass(cls, Callback)
                and cls.state_dict is not Callback.state_dict
            ):
                found.add(cls)
    return found


def test_every_stateful_callback_is_covered_here() -> None:
    # A new stateful callback must get a pair above, and with it the tests below.
    covered = {cls.__name__ for cls in [*PAIRS, *ONE_PER_TRAINER]}
    missing = {cls.__name__ for cls in stateful_callback_classes()} - covered
    assert not missing, f"add argument pairs for {sorted(missing)} to PAIRS (or, with a reason, to ONE_PER_TRAINER)"


@pytest.mark.parametrize("cls", sorted(PAIRS, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_state_key_tells_instances_apart_by_their_arguments(cls: type[Callback]) -> None:
    first, second = (cls(**kwargs) for kwargs in PAIRS[cls])
    assert cls.state_key is not Callback.state_key
    assert first.state_key != second.state_key
    assert first.state_key.startswith(cls.__qualname__)
    # The key alone finds the state in a resumed run: equal arguments give equal keys, with no address in them.
    assert cls(**PAIRS[cls][0]).state_key == first.state_key
    assert " at 0x" not in first.state_key


@pytest.mark.parametrize("cls", sorted(ONE_PER_TRAINER, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_a_second_instance_of_a_one_per_trainer_callback_is_refused(cls: type[Callback]) -> None:
    assert cls(**ONE_PER_TRAINER[cls]).state_key == cls.__qualname__
    with pytest.raises(RuntimeError, match=f"more than one stateful callback of type `{cls.__name__}`"):
        pl.Trainer(callbacks=[cls(**ONE_PER_TRAINER[cls]), cls(**ONE_PER_TRAINER[cls])], logger=False)


def test_a_custom_suggestion_rule_is_keyed_by_its_name() -> None:
    def knee(lrs, smoothed):
        return 0

    assert LRRangeTest(suggestion=knee).state_key == LRRangeTest(suggestion=knee).state_key
    assert "'suggestion': 'knee'" in LRRangeTest(suggestion=knee).state_key


class Data(pl.LightningDataModule):
    """96 points in 4 classes; the validation loader reads its own batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_size, self.val_batch_size = 16, 16
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(96, 8, generator=generator)
        y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
        self.train_set, self.val_set = TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size)


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch, batch_idx):
        loss = self.criterion(self(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.criterion(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class StatesAfterRestore(Callback):
    """First in the list: the watched callbacks' states right after Lightning restored them, before any hook."""

    def __init__(self, watched: list[Callback]) -> None:
        self.watched, self.states = watched, {}

    def on_fit_start(self, trainer, pl_module):
        self.states = {cb.state_key: cb.state_dict() for cb in self.watched}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def fit(tmp_path: Path, callbacks: list[Callback], ckpt_path: Path | None = None) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Net(), datamodule=Data(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("cls", sorted(PAIRS, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_two_instances_fit_save_and_resume_each_with_its_own_state(cls: type[Callback], tmp_path: Path) -> None:
    first, second = (cls(**kwargs) for kwargs in PAIRS[cls])
    trainer = fit(tmp_path, [first, second])  # Lightning refused this before: one key for both
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    saved = torch.load(tmp_path / "two.ckpt", weights_only=False)["callbacks"]
    assert {first.state_key, second.state_key} <= saved.keys()
    assert not same(saved[first.state_key], saved[second.state_key]), (
        "the pair must keep different states, or a mix-up would go unseen"
    )

    resumed = [cls(**kwargs) for kwargs in PAIRS[cls]]
    probe = StatesAfterRestore(resumed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, [probe, *resumed], ckpt_path=tmp_path / "two.ckpt")
    # Lightning warns about every checkpointed state no callback of the resumed run claims.
    assert not [w for w in caught if "Please add the following callbacks" in str(w.message)]
    for callback in resumed:
        assert same(probe.states[callback.state_key], saved[callback.state_key])


def test_a_checkpoint_from_before_state_keys_still_loads(tmp_path: Path) -> None:
    # Checkpoints written before FullDatasetLoss had a state_key hold its state under the class name.
    loss = FullDatasetLoss(splits=["val"])
    fit(tmp_path, [loss]).save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=False)
    checkpoint["callbacks"] = {"FullDatasetLoss": checkpoint["callbacks"].pop(loss.state_key)}
    torch.save(checkpoint, tmp_path / "old.ckpt")

    resumed = FullDatasetLoss(splits=["val"])
    probe = StatesAfterRestore([resumed])
    with warnings.catch_warnings():
        # Lightning compares keys before any hook runs, so it still says the class name has no callback.
        warnings.filterwarnings("ignore", message=".*Please add the following callbacks.*")
        fit(tmp_path, [probe, resumed], ckpt_path=tmp_path / "old.ckpt")
    assert len(loss.history) == 2
    assert probe.states[resumed.state_key] == {"history": loss.history}
