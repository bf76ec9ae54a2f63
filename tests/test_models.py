"""Reference models: every task trains a step, shapes are right, bad optimizer arguments fail at construction."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_tricks.data import DigitsDataModule, SyntheticClassificationDataModule, SyntheticRegressionDataModule
from lightning_tricks.models import CNN, MLP
from lightning_tricks.protocol import find_output_layer, infer_task


@pytest.mark.parametrize(("cls", "shape"), [(MLP, (1, 8, 8)), (CNN, (1, 8, 8)), (CNN, (1, 40)), (MLP, (16,))])
def test_output_shape_and_output_layer(cls, shape) -> None:
    model = cls(input_shape=shape, num_outputs=7)
    assert model(torch.randn(3, *shape)).shape == (3, 7)
    name, layer = find_output_layer(model)
    assert name == "net." + str(len(model.net) - 1)
    assert isinstance(layer, nn.Linear) and layer.out_features == 7


def test_cnn_refuses_flat_input_shape() -> None:
    with pytest.raises(ValueError, match=r"`input_shape` must be \(C, L\) or \(C, H, W\), got \(16,\)"):
        CNN(input_shape=(16,), num_outputs=2)


@pytest.mark.parametrize("lr", [-0.1, -1e-3])
def test_negative_learning_rate_fails_at_construction(lr: float) -> None:
    with pytest.raises(ValueError, match=rf"`optimizer` Adam\(\{{'lr': {lr}\}}\) is invalid: .*{lr}"):
        MLP(input_shape=(4,), num_outputs=2, optimizer=partial(torch.optim.Adam, lr=lr))


def test_unknown_task_and_inconsistent_outputs_fail() -> None:
    with pytest.raises(ValueError, match=r"`task` must be one of .*got 'clasification'"):
        MLP(input_shape=(4,), num_outputs=2, task="clasification")
    with pytest.raises(ValueError, match="needs one output"):
        MLP(input_shape=(4,), num_outputs=2, task="binary")
    with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\), got 1.0"):
        MLP(input_shape=(4,), num_outputs=2, dropout=1.0)


@pytest.mark.parametrize(
    "dm",
    [
        DigitsDataModule(batch_size=64),
        SyntheticClassificationDataModule(num_samples=300, num_classes=2, priors=[0.8, 0.2], task="binary"),
        SyntheticRegressionDataModule(num_samples=300),
    ],
    ids=["multiclass", "binary", "regression"],
)
def test_every_task_fits_and_logs_its_metric(dm, tmp_path) -> None:
    model = MLP(input_shape=dm.input_shape, num_outputs=dm.num_outputs, task=dm.task, hidden_sizes=[16])
    assert infer_task(model) == dm.task
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    metric = "test/mae" if dm.task == "regression" else "test/acc"
    assert set(result) == {"test/loss", metric} and torch.isfinite(torch.tensor(result["test/loss"]))
