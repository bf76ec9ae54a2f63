"""The shipped checkpoint configs: last.ckpt is the latest completed epoch (optionally also every N steps), the
best file is the best epoch, and the run summary names each truthfully."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

from lightning_tricks.commands.train import build, train

# Adam at 0.03 on digits: val loss reaches its minimum in epoch 4 of 0..5, then rises (seed 42).
EPOCHS = 6
TOO_HIGH_LR = "model.optimizer.lr=0.03"


def checkpoint_config(compose_train, *overrides: str):
    """recipe=default's ModelCheckpoint callbacks, exactly as shipped, and none of its other callbacks."""
    quiet = ["logger=none", "trainer.enable_progress_bar=false", "test=false"]
    cfg = compose_train(f"trainer.max_epochs={EPOCHS}", TOO_HIGH_LR, *quiet, *overrides)
    with open_dict(cfg):
        cfg.callbacks = {
            name: node
            for name, node in cfg.callbacks.items()
            if node is not None and node._target_ == "lightning.pytorch.callbacks.ModelCheckpoint"
        }
    assert set(cfg.callbacks) >= {"model_checkpoint", "last_checkpoint"}
    return cfg


def saved(path: str | Path) -> tuple[int, int]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["epoch"], ckpt["global_step"]


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # the resume, on purpose
def test_last_ckpt_is_the_final_epoch_when_val_loss_stopped_improving(compose_train, tmp_path: Path) -> None:
    """Lightning 2.6's `save_last` on the monitoring ModelCheckpoint left last.ckpt at the best epoch (4)."""
    summary = train(checkpoint_config(compose_train))
    best_epoch, best_step = saved(summary.best_checkpoint)
    assert best_epoch < EPOCHS - 1  # the premise: the last epochs did not improve val loss
    assert Path(summary.best_checkpoint).name.startswith(f"epoch{best_epoch:03d}-val_loss")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert summary.last_checkpoint == str(last)
    steps_per_epoch = best_step // (best_epoch + 1)
    assert saved(last) == (EPOCHS - 1, EPOCHS * steps_per_epoch)
    assert sorted(p.name for p in last.parent.iterdir()) == sorted([Path(summary.best_checkpoint).name, "last.ckpt"])
    # "resume: ckpt_path=<this file>" continues after the final epoch: one more epoch trains epoch EPOCHS only.
    resumed = train(checkpoint_config(compose_train, f"trainer.max_epochs={EPOCHS + 1}", f"ckpt_path={last}"))
    assert resumed.last_checkpoint == str(last)
    assert saved(last) == (EPOCHS, (EPOCHS + 1) * steps_per_epoch)


class RecordLastStep(Callback):
    """The global step last.ckpt holds at the start of every training batch."""

    def __init__(self, path: Path) -> None:
        self.path, self.steps = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.path.exists():
            self.steps.append(saved(self.path)[1])


def test_last_ckpt_every_n_steps_inside_epochs_and_at_every_epoch_end(compose_train, tmp_path: Path) -> None:
    cfg = checkpoint_config(
        compose_train,
        "trainer.max_epochs=2",
        "+callbacks@callbacks.last_checkpoint_steps=last_checkpoint_steps",
        "callbacks.last_checkpoint_steps.every_n_train_steps=7",
    )
    datamodule, model, trainer = build(cfg)
    record = RecordLastStep(tmp_path / "checkpoints" / "last.ckpt")
    trainer.callbacks.insert(0, record)
    trainer.fit(model, datamodule=datamodule)
    steps_per_epoch = trainer.global_step // 2
    assert steps_per_epoch % 7 != 0  # so the epoch ends between two step saves
    every_7 = set(range(7, trainer.global_step, 7))
    ends = {steps_per_epoch, 2 * steps_per_epoch}
    # Each save is visible from the next batch on; the final epoch end is read after fit.
    assert set(record.steps) == (every_7 | ends) - {trainer.global_step}
    assert saved(tmp_path / "checkpoints" / "last.ckpt") == (1, trainer.global_step)
    assert not list((tmp_path / "checkpoints").glob("last-v*.ckpt"))
