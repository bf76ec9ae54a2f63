"""Recipe 2.5 — LastLayerBiasInit: closed forms for every task, DDP-global statistics, once per run, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks import InitLossCheck, LastLayerBiasInit
from lightning_tricks.data import SyntheticClassificationDataModule, SyntheticRegressionDataModule
from lightning_tricks.functional.bias_init import TargetStats, bias_from_stats, bias_from_targets
from lightning_tricks.models import MLP
from lightning_tricks.testing import run_ddp
from lightning_tricks.utilities.protocol import AdapterError


def fit_setup(model: pl.LightningModule, dm, callback: LastLayerBiasInit, tmp_path: Path, **kwargs) -> pl.Trainer:
    """A Trainer that runs set-up (where the bias is set) and stops before any step."""
    trainer = pl.Trainer(
        max_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
        **kwargs,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def train_targets_and_outputs(model, dm) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = dm.datasets["train"].tensors
    model.eval()
    with torch.no_grad():
        return y, model(x)


def test_binary_one_to_nine_predicts_the_prior_and_starts_at_its_entropy(tmp_path: Path) -> None:
    dm = SyntheticClassificationDataModule(num_samples=2000, num_classes=2, priors=[0.9, 0.1], task="binary")
    model = MLP(input_shape=(16,), num_outputs=1, task="binary")
    fit_setup(model, dm, LastLayerBiasInit(zero_weights=True), tmp_path)
    y, logits = train_targets_and_outputs(model, dm)
    assert torch.sigmoid(logits).sub(0.1).abs().max() < 1e-4
    entropy = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    assert float(nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), y)) == pytest.approx(
        entropy, abs=1e-4
    )


def test_regression_starts_at_the_mean_with_the_variance_as_loss(tmp_path: Path) -> None:
    dm = SyntheticRegressionDataModule(num_samples=2000, target_mean=50.0, target_std=5.0)
    model = MLP(input_shape=(16,), num_outputs=1, task="regression")
    fit_setup(model, dm, LastLayerBiasInit(zero_weights=True), tmp_path)
    y, prediction = train_targets_and_outputs(model, dm)
    assert torch.allclose(prediction, y.mean().expand_as(prediction), atol=1e-4)
    assert abs(float(prediction[0]) - 50.0) < 0.5
    assert float(nn.functional.mse_loss(prediction, y)) == pytest.approx(float(y.var(unbiased=False)), rel=1e-4)


def test_regression_targets_far_from_unit_scale_get_standardisation_advice(tmp_path: Path) -> None:
    dm = SyntheticRegressionDataModule(num_samples=500, target_mean=50.0, target_std=200.0)
    with pytest.warns(UserWarning, match=r"targets \[0\] have standard deviation \[\d+.*consider standardising"):
        fit_setup(MLP(input_shape=(16,), num_outputs=1, task="regression"), dm, LastLayerBiasInit(), tmp_path)


def test_multiclass_skewed_priors_start_at_the_prior_entropy(tmp_path: Path) -> None:
    priors = [0.6, 0.25, 0.1, 0.05]
    dm = SyntheticClassificationDataModule(num_samples=4000, num_classes=4, priors=priors)
    model = MLP(input_shape=(16,), num_outputs=4)
    callback = LastLayerBiasInit(zero_weights=True)
    fit_setup(model, dm, callback, tmp_path)
    y, logits = train_targets_and_outputs(model, dm)
    entropy = -sum(p * math.log(p) for p in priors)
    assert float(nn.functional.cross_entropy(logits, y)) == pytest.approx(entropy, abs=1e-3)
    assert torch.allclose(torch.softmax(callback.bias, 0), torch.tensor(priors), atol=1e-3)


def test_with_init_loss_check_the_expected_loss_is_the_prior_entropy(tmp_path: Path) -> None:
    priors = [0.6, 0.25, 0.1, 0.05]
    dm = SyntheticClassificationDataModule(num_samples=4000, num_classes=4, priors=priors)
    pl.seed_everything(0, verbose=False)
    model = MLP(input_shape=(16,), num_outputs=4)  # weights left as initialised: the check's tolerance applies
    check = InitLossCheck(on_failure="raise")
    trainer = pl.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         callbacks=[check, LastLayerBiasInit()], default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, datamodule=dm)  # the check is listed first, yet sees the initialised model
    assert check.result.passed and check.result.details["bias_from_data"]
    # expected from the batches the check read, so close to (not exactly) the whole set's prior entropy
    assert check.result.expected == pytest.approx(-sum(p * math.log(p) for p in priors), abs=0.05)


def test_absent_classes_get_a_finite_floor() -> None:
    bias = bias_from_targets("multiclass", torch.tensor([0, 0, 1, 1]), num_outputs=3)
    assert torch.isfinite(bias).all() and bias[2] < bias[0]
    ones = bias_from_targets("binary", torch.ones(8), num_outputs=1)
    assert torch.isfinite(ones).all() and torch.sigmoid(ones) > 0.9


def test_statistics_add_up_across_shards_exactly() -> None:
    y = torch.tensor([0, 2, 2, 1, 0, 2, 2, 2])
    whole = TargetStats.from_targets("multiclass", y, 3)
    parts = [TargetStats.from_targets("multiclass", y[i::2], 3) for i in range(2)]
    assert torch.equal(parts[0].sums + parts[1].sums, whole.sums)
    assert torch.equal(bias_from_stats(whole), bias_from_targets("multiclass", y, 3))


def test_resume_keeps_the_checkpoints_bias(tmp_path: Path) -> None:
    dm = SyntheticClassificationDataModule(num_samples=400, num_classes=2, priors=[0.9, 0.1], task="binary")
    model = MLP(input_shape=(16,), num_outputs=1, task="binary")
    first = LastLayerBiasInit()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
               callbacks=[first, checkpoint]).fit(model, datamodule=dm)  # fmt: skip
    trained = model.net[-1].bias.detach().clone()
    assert not torch.equal(trained, first.bias)  # training moved it after the init
    again = LastLayerBiasInit()
    pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
               callbacks=[again]).fit(model, datamodule=dm, ckpt_path=tmp_path / "last.ckpt")  # fmt: skip
    assert again.stats is None  # not recomputed, not re-applied
    assert torch.equal(model.net[-1].bias.detach(), trained)


def test_trick_module_method_sets_the_same_bias() -> None:
    dm = SyntheticClassificationDataModule(num_samples=1000, num_classes=3, priors=[0.7, 0.2, 0.1])
    dm.setup()
    model = MLP(input_shape=(16,), num_outputs=3)
    value = model.init_output_bias(dm.train_dataloader())
    assert torch.allclose(model.net[-1].bias.double(), value.double(), atol=1e-6)
    y = dm.datasets["train"].tensors[1]
    assert torch.allclose(value, bias_from_targets("multiclass", y, 3))


def test_clear_errors(tmp_path: Path) -> None:
    class NoBias(MLP):
        def __init__(self) -> None:
            super().__init__(input_shape=(16,), num_outputs=2)
            self.net[-1] = nn.Linear(64, 2, bias=False)

    dm = SyntheticClassificationDataModule(num_samples=200, num_classes=2)
    with pytest.raises(AdapterError, match=r"output layer 'net.5' \(Linear\) has no bias"):
        fit_setup(NoBias(), dm, LastLayerBiasInit(), tmp_path)
    four = SyntheticClassificationDataModule(num_samples=200, num_classes=4)
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\] .* got labels from 0 to 3"):
        fit_setup(MLP(input_shape=(16,), num_outputs=2), four, LastLayerBiasInit(), tmp_path)

    class NaNTargets(SyntheticRegressionDataModule):
        def load_arrays(self):
            x, y = super().load_arrays()
            y[::10] = np.nan
            return x, y

    with pytest.raises(ValueError, match=r"\d+ training targets are NaN"):
        fit_setup(MLP(input_shape=(16,), num_outputs=1, task="regression"), NaNTargets(num_samples=200),
                  LastLayerBiasInit(), tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match=r"`task` must be one of .*got 'clasification'"):
        LastLayerBiasInit(task="clasification")
    with pytest.raises(ValueError, match=r"`max_batches` must be None or an integer >= 1, got 0"):
        LastLayerBiasInit(max_batches=0)


# --- DDP --------------------------------------------------------------------------------------


class EvenOdd(pl.LightningDataModule):
    """Even samples are class 0, odd ones classes 1-3: rank 0's shard and rank 1's share no class."""

    def __init__(self) -> None:
        super().__init__()
        n = 600
        y = torch.where(torch.arange(n) % 2 == 0, torch.zeros(n, dtype=torch.long), 1 + torch.arange(n) % 3)
        self.data = TensorDataset(torch.randn(n, 16, generator=torch.Generator().manual_seed(0)), y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=50, shuffle=True)


def ddp_bias(devices: int) -> list[float]:
    pl.seed_everything(0, verbose=False)
    model = MLP(input_shape=(16,), num_outputs=4)
    callback = LastLayerBiasInit()
    pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=0,
               logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
               callbacks=[callback]).fit(model, datamodule=EvenOdd())  # fmt: skip
    return model.net[-1].bias.detach().tolist()


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_ranks_set_the_same_global_bias_as_one_process(chdir_tmp: Path) -> None:
    rank0, rank1 = run_ddp(ddp_bias, devices=2, timeout=180)
    single = ddp_bias(devices=1)
    assert rank0 == rank1
    assert np.allclose(rank0, single, atol=1e-6)
    # the whole set's priors (1/2, 1/6, 1/6, 1/6), not a shard's (rank 0 alone would see only class 0)
    assert np.allclose(torch.softmax(torch.tensor(rank0), 0).tolist(), [0.5, 1 / 6, 1 / 6, 1 / 6], atol=1e-6)
