"""Recipe 2.3 — FullDatasetLoss: sum(loss_i) / N exactly, on 1 and 2 ranks, where Lightning's epoch mean is not."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks import FullDatasetLoss
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP
from lightning_tricks.testing import run_ddp

SIZES = (5, 7, 64, 101)


def per_sample_losses(n: int) -> torch.Tensor:
    """The loss of sample i is this value: the model outputs its input and the loss is the batch mean."""
    return torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64).float() * 10


class LossIsInput(pl.LightningModule):
    """Output = input, loss = mean output: sample i's loss is x_i, so the exact full loss is mean(x)."""

    task = "regression"

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))  # something to optimise
        self.x = per_sample_losses(n)

    def forward(self, x):
        return x + 0 * self.weight

    def loss_fn(self, outputs, targets):
        return outputs.mean()

    def training_step(self, batch, batch_idx):
        return self.loss_fn(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        # Lightning's own epoch mean with sync_dist: what users log today
        self.log("val/lightning_mean", self.loss_fn(self(batch[0]), batch[1]), on_epoch=True, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def _loader(self):
        return DataLoader(TensorDataset(self.x, torch.zeros_like(self.x)), batch_size=2)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()


def full_losses(devices: int) -> dict:
    results = {}
    for n in SIZES:
        callback = FullDatasetLoss(splits=["val", "train"])
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            max_epochs=1,
            callbacks=[callback],
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(LossIsInput(n))
        (entry,) = callback.history
        results[n] = {
            "full": entry["val"],
            "train": entry["train"],
            "count": entry["val_count"],
            "lightning": float(trainer.callback_metrics["val/lightning_mean"]),
        }
    return results


def test_single_process_equals_sum_over_count() -> None:
    for n, result in full_losses(devices=1).items():
        assert result["full"] == pytest.approx(float(per_sample_losses(n).double().mean()), abs=1e-6)
        assert result["train"] == pytest.approx(result["full"], abs=1e-6) and result["count"] == n


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_equal_sum_over_count_where_lightning_does_not() -> None:
    rank0, rank1 = run_ddp(full_losses, devices=2, timeout=240)
    for n in SIZES:
        exact = float(per_sample_losses(n).double().mean())
        assert rank0[n]["full"] == pytest.approx(exact, abs=1e-6) == rank1[n]["full"]
        assert rank0[n]["count"] == n  # each sample exactly once, no padding duplicates
    # Lightning's sync_dist epoch mean over a padded DistributedSampler: not the data set's mean.
    assert any(abs(rank0[n]["lightning"] - float(per_sample_losses(n).double().mean())) > 1e-3 for n in (5, 7, 101))


def test_accuracy_and_loss_match_a_manual_pass_on_digits(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(seed=0)
    model = MLP(input_shape=dm.input_shape, num_outputs=10)
    callback = FullDatasetLoss(splits=["val", "test"], every_n_epochs=2)
    logger = CSVLogger(tmp_path, name="csv", version="")
    pl.Trainer(max_epochs=4, callbacks=[callback], logger=logger, enable_progress_bar=False,
               enable_checkpointing=False, default_root_dir=tmp_path).fit(model, datamodule=dm)  # fmt: skip
    assert [e["epoch"] for e in callback.history] == [1, 3]
    x, y = dm.datasets["val"].tensors
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert callback.history[-1]["val"] == pytest.approx(float(nn.functional.cross_entropy(out, y)), abs=1e-5)
    assert callback.history[-1]["val_acc"] == pytest.approx(float((out.argmax(-1) == y).double().mean()), abs=1e-9)
    logged = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "tricks/full_loss/val" in logged and "tricks/full_loss/test_acc" in logged


def test_side_evaluation_restores_every_submodule_mode() -> None:
    from lightning_tricks.utilities.isolation import evaluating

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a frozen BatchNorm the user chose to keep in eval mode
    state = torch.get_rng_state()
    with evaluating(model):
        assert not any(m.training for m in model.modules())
        torch.rand(3)  # draws inside do not move the run's RNG
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert torch.equal(torch.get_rng_state(), state)


def test_history_survives_resume(tmp_path: Path) -> None:
    dm = DigitsDataModule(seed=0)
    model = MLP(input_shape=dm.input_shape, num_outputs=10)
    first = FullDatasetLoss()
    pl.Trainer(max_epochs=2, callbacks=[first, ModelCheckpoint(dirpath=tmp_path, save_last=True)], logger=False,
               enable_progress_bar=False).fit(model, datamodule=dm)  # fmt: skip
    resumed = FullDatasetLoss()
    pl.Trainer(
        max_epochs=3,
        callbacks=[resumed],
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path / "resumed",
    ).fit(model, datamodule=dm, ckpt_path=tmp_path / "last.ckpt")
    assert [e["epoch"] for e in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == first.history


def test_partial_validation_is_flagged_and_bad_arguments_named(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"limit_val_batches=0.5 .* whole validation set"):
        pl.Trainer(max_epochs=1, limit_val_batches=0.5, callbacks=[FullDatasetLoss()], logger=False,
                   enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path).fit(
            MLP(input_shape=(1, 8, 8), num_outputs=10), datamodule=DigitsDataModule()
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"`splits` must be a non-empty subset of .*got \['valid'\]"):
        FullDatasetLoss(splits=["valid"])
    with pytest.raises(ValueError, match=r"`every_n_epochs` must be an integer >= 1, got 0"):
        FullDatasetLoss(every_n_epochs=0)
