"""EarlyStopping: stops where the scripted loss says, restores exactly the best checkpoint's weights, resumes, and
decides alike on every DDP rank where Lightning's own reads rank-local values."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.callbacks import SeedEverything
from lightning_tricks.callbacks.early_stopping import EarlyStopping
from lightning_tricks.testing import run_ddp

# Dyadic values: a constant logged per batch averages back to itself exactly.
LOSSES = [8.0, 6.0, 4.0, 3.0, 3.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]  # minimum at epoch 3
RANK_LOSSES = [
    [10.0, 8.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0],  # alone: best epoch 2, patience 2 -> stop at 4
    [10.0, 9.0, 8.0, 6.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],  # alone: best epoch 4 -> stop at 6
]


def expected_stop(losses: list[float], patience: int) -> tuple[int, int]:
    """Reference: (best epoch, stop epoch) of a strict-improvement rule with ``patience`` checks."""
    best, best_epoch, wait = float("inf"), 0, 0
    for epoch, value in enumerate(losses):
        if value < best:
            best, best_epoch, wait = value, epoch, 0
        else:
            wait += 1
            if wait >= patience:
                return best_epoch, epoch
    raise AssertionError("the scripted losses never exhaust the patience")


class ScriptedLoss(pl.LightningModule):
    """Real weights trained by SGD every step (so they differ per epoch); the monitored value comes from a script."""

    def __init__(self, script: list[list[float]], sync_dist: bool = True) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.script, self.sync_dist = script, sync_dist
        generator = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 4, generator=generator), torch.randn(32, 2, generator=generator)

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        value = self.script[self.global_rank % len(self.script)][self.current_epoch]
        self.log("val/loss", value, on_epoch=True, sync_dist=self.sync_dist)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16)


def fit(root: Path, callbacks: list, max_epochs: int = len(LOSSES), ckpt_path: str | None = None, **kwargs):
    torch.manual_seed(0)
    model = ScriptedLoss([LOSSES])
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **{"logger": False, **kwargs},
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


def assert_weights_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    assert ours.keys() == state.keys()
    for key, value in ours.items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("restore", [True, False])
def test_stops_at_the_minimum_plus_patience_and_restores_the_best_checkpoints_weights(tmp_path, restore) -> None:
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="val/loss", mode="min", save_top_k=1)
    # Every epoch's weights, to compare with. Not `save_last` on `best`: Lightning 2.6 refreshes that last.ckpt
    # only when a top-k file is written (test_checkpoints.py checks the shipped configs' last.ckpt).
    every = ModelCheckpoint(dirpath=tmp_path / "every", filename="{epoch}", save_top_k=-1)
    stopping = EarlyStopping("val/loss", patience=3, restore_best_weights=restore)
    _, model = fit(tmp_path, [stopping, best, every], logger=CSVLogger(tmp_path, name="csv", version=0))
    best_epoch, stop_epoch = expected_stop(LOSSES, patience=3)
    assert (stopping.best_epoch, stopping.stopped_epoch) == (best_epoch, stop_epoch) == (3, 6)
    assert stopping.stopping_reason_message is not None and "did not improve" in stopping.stopping_reason_message
    best_state = torch.load(best.best_model_path, weights_only=False)
    last_state = torch.load(tmp_path / "every" / f"epoch={stop_epoch}.ckpt", weights_only=False)
    assert best_state["epoch"] == best_epoch and last_state["epoch"] == stop_epoch
    assert stopping.restored is restore
    # The run ends on the best epoch's weights, bit for bit, or on the last epoch's when asked not to restore.
    assert_weights_equal(model, best_state["state_dict"] if restore else last_state["state_dict"])
    other = last_state if restore else best_state
    assert not all(torch.equal(v, other["state_dict"][k]) for k, v in model.state_dict().items())
    logged = pd.read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert logged["tricks/early_stopping/best_epoch"].dropna().tolist() == [best_epoch]
    assert logged["tricks/early_stopping/stopped_epoch"].dropna().tolist() == [stop_epoch]


def test_resumed_run_keeps_patience_and_best_weights(tmp_path) -> None:
    def callbacks(directory: Path) -> list:
        return [
            SeedEverything(0),
            EarlyStopping("val/loss", patience=3),
            ModelCheckpoint(dirpath=directory, save_last=True, save_top_k=-1),
        ]

    full = callbacks(tmp_path / "full")
    _, uninterrupted = fit(tmp_path / "full", full)
    # Interrupted after epoch 4: the best epoch (3) and one non-improving check are only in the checkpoint.
    _, _ = fit(tmp_path / "part", callbacks(tmp_path / "part"), max_epochs=5)
    last = tmp_path / "part" / "last.ckpt"
    state = next(v for k, v in torch.load(last, weights_only=True)["callbacks"].items() if "EarlyStopping" in k)
    assert state["wait_count"] == 1 and state["best_epoch"] == 3 and state["best_weights"] is not None
    resumed_callbacks = callbacks(tmp_path / "part")
    _, resumed = fit(tmp_path / "part", resumed_callbacks, ckpt_path=str(last))
    ours, theirs = resumed_callbacks[1], full[1]
    assert (ours.wait_count, ours.stopped_epoch, ours.best_epoch) == (theirs.wait_count, theirs.stopped_epoch, 3)
    assert ours.wait_count == 3 and ours.restored
    assert_weights_equal(resumed, uninterrupted.state_dict())


def rank_local_metric(devices: int) -> dict:
    out = {}
    for name, callback in [
        ("lightning", LightningEarlyStopping("val/loss", patience=2)),
        ("ours", EarlyStopping("val/loss", patience=2)),
    ]:
        torch.manual_seed(0)
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp",
            max_epochs=len(RANK_LOSSES[0]),
            callbacks=[callback],
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        model = ScriptedLoss(RANK_LOSSES, sync_dist=False)  # the flaw: a rank-local monitored value
        trainer.fit(model)
        out[name] = {
            "stopped_epoch": callback.stopped_epoch,
            "best_score": float(callback.best_score),
            "best_epoch": getattr(callback, "best_epoch", None),
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
        }
    return out


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_ddp_rank_local_metric_gives_one_decision_on_every_rank() -> None:
    rank0, rank1 = run_ddp(rank_local_metric, devices=2)
    mean = [(a + b) / 2 for a, b in zip(*RANK_LOSSES, strict=True)]
    best_epoch, stop_epoch = expected_stop(mean, patience=2)
    assert (best_epoch, stop_epoch) == (3, 5)
    for result in (rank0["ours"], rank1["ours"]):
        assert (result["best_epoch"], result["stopped_epoch"]) == (best_epoch, stop_epoch)
        assert result["best_score"] == min(mean)
    for key, value in rank0["ours"]["weights"].items():
        assert torch.equal(value, rank1["ours"]["weights"][key])
    # Lightning's own: each rank judges its own values, so the ranks hold different best scores, and the
    # earliest rank's patience (rank 0's, epoch 4) stops both.
    plain0, plain1 = rank0["lightning"], rank1["lightning"]
    assert plain0["best_score"] != plain1["best_score"]
    assert plain0["stopped_epoch"] == expected_stop(RANK_LOSSES[0], patience=2)[1] == 4


def test_restore_best_weights_must_be_bool() -> None:
    with pytest.raises(ValueError, match="`restore_best_weights` must be True or False, got 'yes'"):
        EarlyStopping("val/loss", restore_best_weights="yes")
