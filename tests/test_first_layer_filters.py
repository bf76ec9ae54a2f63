"""Recipe 4 — FirstLayerFilters: the first layer's weights as pictures, exactly the weights, every N epochs."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_tricks import FirstLayerFilters
from lightning_tricks.callbacks.first_layer_filters import filters_as_images, first_layer
from lightning_tricks.data import DigitsDataModule, MNIST1DDataModule
from lightning_tricks.models import CNN, MLP
from lightning_tricks.utilities.protocol import AdapterError


def fit(tmp_path: Path, model, dm, callback, epochs: int = 2) -> None:
    pl.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=0, callbacks=[callback],
               logger=CSVLogger(tmp_path, name="csv", version=""), enable_progress_bar=False,
               enable_checkpointing=False, enable_model_summary=False).fit(model, datamodule=dm)  # fmt: skip


def test_mlp_rows_are_shown_as_input_images(tmp_path: Path) -> None:
    model = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_sizes=[24])
    callback = FirstLayerFilters(every_n_epochs=1)
    fit(tmp_path, model, DigitsDataModule(), callback, epochs=3)
    assert torch.equal(callback.last_images, model.net[1].weight.detach().reshape(24, 1, 8, 8))
    files = sorted(p.name for p in (tmp_path / "csv" / "media").iterdir())
    assert files == ["tricks_first_layer_filters_step2.png", "tricks_first_layer_filters_step4.png",
                     "tricks_first_layer_filters_step6.png"]  # fmt: skip


def test_conv_kernels_are_shown_as_they_are(tmp_path: Path) -> None:
    model = CNN(input_shape=(1, 8, 8), num_outputs=10, channels=[6, 8])
    callback = FirstLayerFilters(every_n_epochs=2)
    fit(tmp_path, model, DigitsDataModule(), callback)
    assert torch.equal(callback.last_images, model.net[0].weight.detach())
    assert len(list((tmp_path / "csv" / "media").iterdir())) == 1  # epochs 0, 1: only the second


def test_conv1d_kernels_become_strips_and_errors_name_the_fix(tmp_path: Path) -> None:
    weight = nn.Conv1d(1, 4, 5).weight
    assert filters_as_images(weight, (1, 40)).shape == (4, 1, 1, 5)
    model = CNN(input_shape=(1, 40), num_outputs=10, channels=[4])
    callback = FirstLayerFilters()
    fit(tmp_path, model, MNIST1DDataModule(num_samples=200), callback, epochs=1)
    assert callback.last_images.shape == (4, 1, 1, 3)
    with pytest.raises(AdapterError, match="pass `layer=`"):
        first_layer(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match=r"`every_n_epochs` must be an integer >= 1, got 0"):
        FirstLayerFilters(every_n_epochs=0)
