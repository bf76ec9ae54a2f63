"""Reference models: every task trains a step, shapes are right, bad optimizer arguments fail at construction."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_tricks.data import DigitsDataModule, SyntheticClassificationDataModule, SyntheticRegressionDataModule
from lightning_tricks.models import CNN, MLP
from lightning_tricks.utilities.protocol import find_output_layer, infer_task


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


# --- CNN: spatial dropout (recipe 4) and a fully connected head ---------------------------------------


@pytest.mark.parametrize(("shape", "layer"), [((1, 8, 8), nn.Dropout2d), ((1, 40), nn.Dropout1d)])
def test_cnn_spatial_dropout_after_every_block_but_the_last(shape, layer) -> None:
    model = CNN(input_shape=shape, num_outputs=3, channels=(4, 8, 8), spatial_dropout=0.25)
    kinds = [type(m) for m in model.net]
    drops = [i for i, k in enumerate(kinds) if k is layer]
    assert len(drops) == 2 and all(model.net[i].p == 0.25 for i in drops)
    convs = [i for i, m in enumerate(model.net) if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert [i - 3 for i in drops] == convs[:2]  # right after the first two blocks' BatchNorm and ReLU
    assert not any(isinstance(m, (nn.Dropout2d, nn.Dropout1d)) for m in model.net[convs[-1] :])
    # channels really are dropped whole in training: a dropped channel is zero at every position
    torch.manual_seed(0)
    out = model.net[: drops[0] + 1].train()(torch.randn(16, *shape))
    flat = out.flatten(2)
    zero, nonzero = (flat == 0).all(-1), (flat != 0).any(-1)
    assert zero.any() and (zero | nonzero).all()


def test_cnn_without_spatial_dropout_has_no_channel_dropout() -> None:
    model = CNN(input_shape=(1, 8, 8), num_outputs=3, spatial_dropout=0.0)
    assert not any(isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)) for m in model.net)


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.1", True])
def test_cnn_bad_spatial_dropout_is_named(bad) -> None:
    with pytest.raises(ValueError, match=rf"`spatial_dropout` must be in \[0, 1\), got {bad!r}"):
        CNN(input_shape=(1, 8, 8), num_outputs=3, spatial_dropout=bad)


def test_cnn_spatial_dropout_needs_two_blocks() -> None:
    with pytest.raises(ValueError, match=r"`spatial_dropout` needs at least two conv blocks .*channels=\[8\]"):
        CNN(input_shape=(1, 8, 8), num_outputs=3, channels=[8], spatial_dropout=0.1)


def test_cnn_hidden_sizes_add_a_bigger_head() -> None:
    small = CNN(input_shape=(1, 8, 8), num_outputs=3)
    big = CNN(input_shape=(1, 8, 8), num_outputs=3, hidden_sizes=[64, 32], dropout=0.1)
    linears = [m for m in big.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 32), (32, 3)]
    assert sum(isinstance(m, nn.Dropout) for m in big.net) == 3  # before each fully connected layer
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())
    assert big(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"`hidden_sizes` must be an integer >= 1, got 0"):
        CNN(input_shape=(1, 8, 8), num_outputs=3, hidden_sizes=[0])


@pytest.mark.parametrize(("shape", "norm"), [((1, 8, 8), nn.BatchNorm2d), ((1, 40), nn.BatchNorm1d)])
def test_cnn_normalises_every_conv_block_and_can_do_without(shape, norm) -> None:
    model = CNN(input_shape=shape, num_outputs=3, channels=(4, 8))
    kinds = [type(m).__name__ for m in model.net]
    convs = [i for i, m in enumerate(model.net) if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    # conv -> BatchNorm -> ReLU; the conv has no bias, which the norm's shift would cancel
    assert all(isinstance(model.net[i + 1], norm) and isinstance(model.net[i + 2], nn.ReLU) for i in convs), kinds
    assert all(model.net[i].bias is None for i in convs)
    plain = CNN(input_shape=shape, num_outputs=3, channels=(4, 8), batch_norm=False)
    assert not any(isinstance(m, norm) for m in plain.net)
    assert all(m.bias is not None for m in plain.net if isinstance(m, (nn.Conv1d, nn.Conv2d)))
    with pytest.raises(ValueError, match=r"`batch_norm` must be True or False, got 'yes'"):
        CNN(input_shape=shape, num_outputs=3, batch_norm="yes")
