"""Regularisation knobs: weight decay on weights only, and the Dropout-before-BatchNorm lint."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_tricks.callbacks.dropout_batchnorm_lint import (
    DropoutBatchNormLint,
    call_order,
    dropout_batchnorm_pairs,
)
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.functional.weight_decay import decay_split, parameter_groups
from lightning_tricks.models import CNN, MLP


class TokenNet(nn.Module):
    """Embedding, LayerNorm, a frozen layer and a tied output: the awkward cases of the grouping."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.norm = nn.LayerNorm(6)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight  # tied: one parameter, two modules
        self.scale = nn.Parameter(torch.ones(()))


def check_grouping(model: nn.Module) -> tuple[list[str], list[str]]:
    decay, keep = decay_split(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(decay + keep) == sorted(trainable)  # every trainable parameter exactly once
    assert set(decay) == {n for n, p in trainable.items() if p.ndim >= 2}
    groups = parameter_groups(model, 0.1)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(trainable)
    assert {id(p) for p in groups[0]["params"]} == {id(trainable[n]) for n in decay}
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    return decay, keep


def test_mlp_decays_linear_weights_only() -> None:
    decay, keep = check_grouping(MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_sizes=[32, 16]))
    assert decay == ["net.1.weight", "net.3.weight", "net.5.weight"]
    assert keep == ["net.1.bias", "net.3.bias", "net.5.bias"]


def test_cnn_decays_conv_and_linear_weights() -> None:
    decay, keep = check_grouping(CNN(input_shape=(1, 8, 8), num_outputs=10, channels=(4, 8)))
    assert decay == ["net.0.weight", "net.4.weight", "net.9.weight"]  # conv, conv, linear
    assert keep == ["net.1.weight", "net.1.bias", "net.5.weight", "net.5.bias", "net.9.bias"]  # BatchNorms, head bias
    decay, keep = check_grouping(CNN(input_shape=(1, 8, 8), num_outputs=10, channels=(4, 8), batch_norm=False))
    assert decay == ["net.0.weight", "net.3.weight", "net.7.weight"]
    assert keep == ["net.0.bias", "net.3.bias", "net.7.bias"]


def test_embedding_layernorm_frozen_and_tied_parameters() -> None:
    decay, keep = check_grouping(TokenNet())
    assert decay == ["embed.weight"]  # tied head.weight is the same tensor: listed once
    assert keep == ["scale", "norm.weight", "norm.bias"]  # own parameters first; frozen.* left out
    decay, keep = decay_split(TokenNet(), no_decay=["embed.weight"])
    assert decay == [] and "embed.weight" in keep


def test_batchnorm_parameters_are_not_decayed() -> None:
    _, keep = check_grouping(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.GroupNorm(1, 2)))
    assert keep == ["0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]


def test_adamw_step_decays_weights_and_leaves_biases_alone() -> None:
    """With zero gradient AdamW's update is the decay alone: w <- w * (1 - lr * wd); biases stay put."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    before = copy.deepcopy(model.state_dict())
    lr, wd = 0.1, 0.05
    optimizer = torch.optim.AdamW(parameter_groups(model, wd), lr=lr)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, value in model.state_dict().items():
        expected = before[name] * (1 - lr * wd) if value.ndim >= 2 else before[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
        if value.ndim >= 2:
            assert not torch.equal(value, before[name])  # the decay did act: the test can fail


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True, None])
def test_bad_weight_decay_names_the_argument(bad) -> None:
    with pytest.raises(ValueError, match=r"`weight_decay` must be a finite number >= 0, got"):
        parameter_groups(nn.Linear(2, 2), bad)


def test_unknown_no_decay_name_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"`no_decay`.*\['nope'\]"):
        parameter_groups(nn.Linear(2, 2), 0.1, no_decay=["nope"])


# --- the lint ---------------------------------------------------------------------------------------


def pairs_of(model: nn.Module, inputs: torch.Tensor, **kwargs) -> list[tuple[str, str]]:
    return dropout_batchnorm_pairs(model, call_order(model, inputs), **kwargs)


def test_dropout_before_batchnorm_is_flagged_with_names() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Dropout(0.3), nn.BatchNorm1d(6), nn.Linear(6, 2))
    assert pairs_of(model, torch.randn(4, 8)) == [("2", "3")]


def test_batchnorm_before_dropout_is_not_flagged() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 2))
    assert pairs_of(model, torch.randn(4, 8)) == []


def test_zero_dropout_is_not_flagged() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.Dropout(0.0), nn.BatchNorm1d(6))
    assert pairs_of(model, torch.randn(4, 8)) == []


def test_cnn_with_dropout_after_the_last_batchnorm_is_not_flagged() -> None:
    """Our reference CNN has no BatchNorm; this is the usual image layout with one."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout2d(0.2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    assert pairs_of(model, torch.randn(2, 1, 8, 8)) == []


def test_through_weights_follows_dropout_across_a_conv() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout2d(0.2), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    x = torch.randn(2, 1, 8, 8)
    assert pairs_of(model, x) == []  # nearest weight layer ends the chain by default
    assert pairs_of(model, x, through_weights=True) == [("1", "3")]


class Reordered(nn.Module):
    """Registers BatchNorm before Dropout but calls them the other way round (or not)."""

    def __init__(self, dropout_first: bool) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.dropout_first = dropout_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.drop(x)) if self.dropout_first else self.drop(self.bn(x))


def test_execution_order_not_registration_order_decides() -> None:
    x = torch.randn(3, 4)
    assert pairs_of(Reordered(dropout_first=True), x) == [("drop", "bn")]
    assert pairs_of(Reordered(dropout_first=False), x) == []


class Noise(nn.Module):
    """Draws from the global RNG in every mode: what the lint's forward pass must not leak into the run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0 * torch.rand_like(x)


def test_call_order_removes_hooks_and_changes_nothing() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.Dropout(0.3), nn.BatchNorm1d(6), Noise())
    model.train()
    model[2].eval()  # a mixed mode must come back as it was
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 8)
    rng = torch.get_rng_state()
    assert call_order(model, x) == ["0", "1", "2", "3"]
    assert all(not m._forward_hooks for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN stats untouched
    assert torch.equal(torch.get_rng_state(), rng)


def test_hooks_are_removed_when_the_forward_fails() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6))
    with pytest.raises(RuntimeError):
        call_order(model, torch.randn(4, 3))  # wrong width
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"`through_weights` must be True or False, got 'yes'"):
        DropoutBatchNormLint(through_weights="yes")
    with pytest.raises(ValueError, match=r"`on_failure` must be one of"):
        DropoutBatchNormLint(on_failure="shout")


def dropout_bn_mlp() -> MLP:
    model = MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_sizes=[16])
    model.net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.BatchNorm1d(16), nn.Linear(16, 10)
    )
    return model


def fit(tmp_path: Path | None, model: pl.LightningModule, lint: DropoutBatchNormLint, devices: int = 1) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=[lint],
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=DigitsDataModule(seed=0))


def test_lint_warns_once_in_a_real_fit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lint = DropoutBatchNormLint()
    with caplog.at_level("WARNING", logger="lightning_tricks"):
        fit(tmp_path, dropout_bn_mlp(), lint)
    ours = [r for r in caplog.records if "[dropout_batchnorm] FAIL" in r.getMessage()]
    assert len(ours) == 1 and "net.3 -> net.4" in ours[0].getMessage()
    assert lint.result is not None and not lint.result.passed
    assert lint.result.details["pairs"] == [("net.3", "net.4")]


def test_lint_passes_a_clean_model_in_a_real_fit(tmp_path: Path) -> None:
    lint = DropoutBatchNormLint(on_failure="raise")
    fit(tmp_path, MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_sizes=[16], dropout=0.2), lint)
    assert lint.result is not None and lint.result.passed


def ddp_lint_verdict(devices: int) -> tuple[bool, list]:
    lint = DropoutBatchNormLint(on_failure="ignore")
    fit(None, dropout_bn_mlp(), lint, devices=devices)
    return lint.result.passed, [list(p) for p in lint.result.details["pairs"]]


@pytest.mark.slow
@pytest.mark.ddp
def test_lint_gives_the_same_verdict_on_both_ddp_ranks() -> None:
    from lightning_tricks.testing import run_ddp

    rank0, rank1 = run_ddp(ddp_lint_verdict, devices=2, timeout=300)
    assert rank0 == rank1 == (False, [["net.3", "net.4"]])


def test_reference_models_take_weight_decay_on_weights_only(compose_train) -> None:
    from lightning_tricks.commands.train import build_data_and_model

    cfg = compose_train("model=cnn", "model.weight_decay=0.05", "model.optimizer._target_=torch.optim.AdamW")
    _, model = build_data_and_model(cfg)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    # null (the default): one group, the optimizer's own setting on everything
    _, default = build_data_and_model(compose_train())
    assert len(default.configure_optimizers().param_groups) == 1
    with pytest.raises(ValueError, match="`weight_decay` must be a finite number >= 0, got -1"):
        MLP(input_shape=(4,), num_outputs=2, weight_decay=-1)
