"""The recipe's stages as presets: skeleton, overfit, regularize compose, train end to end, and do what they say."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

from lightning_tricks.callbacks import EarlyStopping
from lightning_tricks.callbacks.dropout_batchnorm_lint import DropoutBatchNormLint
from lightning_tricks.commands import train as train_module
from lightning_tricks.data import RandomShiftRotate

BUILD = train_module.build  # the real one, before any test wraps it


def run(compose_train, monkeypatch, *overrides: str):
    """Compose the real config, train it with `train(cfg)`, and keep the objects it built."""
    built = {}

    def spy(cfg):
        built["datamodule"], built["model"], built["trainer"] = BUILD(cfg)
        return built["datamodule"], built["model"], built["trainer"]

    monkeypatch.setattr(train_module, "build", spy)
    cfg = compose_train("+trainer.limit_train_batches=5", *overrides)  # each stage's checks run in full
    summary = train_module.train(cfg)
    assert torch.isfinite(torch.tensor(summary.metrics["val/loss"]))
    return cfg, summary, built


def size(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dropouts(model: torch.nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]


def optimizer_decay(trainer) -> list[float]:
    (optimizer,) = trainer.optimizers
    return [group["weight_decay"] for group in optimizer.param_groups]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn"])  # (the MLP's stages are built, not trained, below: same presets)
def test_skeleton_overfit_regularize_on_digits(model: str, compose_train, monkeypatch) -> None:
    _, _, skeleton = run(compose_train, monkeypatch, "recipe=skeleton", f"model={model}")
    _, _, overfit = run(compose_train, monkeypatch, "recipe=overfit", f"model={model}")
    cfg, _, regularize = run(compose_train, monkeypatch, "recipe=regularize", f"model={model}")

    # skeleton: recipe=default's checks, and nothing that regularises
    names = {type(cb).__name__ for cb in skeleton["trainer"].callbacks}
    assert {"SeedEverything", "InitLossCheck", "FullDatasetLoss", "PredictionDynamics"} <= names
    assert skeleton["datamodule"].augmentation is None
    assert dropouts(skeleton["model"]) == []
    assert optimizer_decay(skeleton["trainer"]) == [0.0]  # one group, no decay
    assert not any(isinstance(cb, LightningEarlyStopping) for cb in skeleton["trainer"].callbacks)

    # overfit: a bigger model, still unregularised
    assert size(overfit["model"]) > 4 * size(skeleton["model"])
    assert overfit["datamodule"].augmentation is None
    assert dropouts(overfit["model"]) == [] and optimizer_decay(overfit["trainer"]) == [0.0]

    # regularize: the big model plus augmentation, weight decay on weights only, dropout, early stopping, lint
    assert size(regularize["model"]) == size(overfit["model"])
    assert isinstance(regularize["datamodule"].augmentation, RandomShiftRotate)
    (optimizer,) = regularize["trainer"].optimizers
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.05, 0.0)
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    assert dropouts(regularize["model"]) and set(dropouts(regularize["model"])) == {0.2}
    callbacks = regularize["trainer"].callbacks
    (stopper,) = [cb for cb in callbacks if isinstance(cb, LightningEarlyStopping)]
    assert isinstance(stopper, EarlyStopping) and stopper.restore_best_weights
    (lint,) = [cb for cb in callbacks if isinstance(cb, DropoutBatchNormLint)]
    assert lint.result is not None and lint.result.passed  # our models put no Dropout before a BatchNorm
    assert cfg.data.augmentation._target_ == "lightning_tricks.data.RandomShiftRotate"

    # full: regularize, plus TTA and a top-3 checkpoint ensemble reported on the test set
    _, summary, full = run(compose_train, monkeypatch, "recipe=full", f"model={model}", "trainer.max_epochs=4")
    assert size(full["model"]) == size(regularize["model"])
    assert isinstance(full["datamodule"].augmentation, RandomShiftRotate)
    names = {type(cb).__name__ for cb in full["trainer"].callbacks}
    assert {"EarlyStopping", "TestTimeAugmentation", "CheckpointEnsemble"} <= names
    metrics = summary.metrics
    assert 0 <= metrics["tricks/tta/test_acc"] <= 1 and 0 <= metrics["tricks/tta/test_acc_no_tta"] <= 1
    assert metrics["test/ensemble_members"] == 3  # save_top_k=3 over 4 epochs
    gain = metrics["test/ensemble_acc"] - metrics["test/ensemble_best_member_acc"]
    assert metrics["test/ensemble_gain_acc"] == pytest.approx(gain, abs=1e-6)


@pytest.mark.parametrize("stage", ["skeleton", "overfit", "regularize", "full"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_stage_composes_for_both_reference_models(stage: str, model: str, compose_train) -> None:
    from lightning_tricks.commands.train import build_data_and_model

    cfg = compose_train(f"recipe={stage}", f"model={model}", "data=mnist1d", "data.num_samples=200")
    datamodule, built = build_data_and_model(cfg)
    assert (datamodule.augmentation is not None) == (stage in ("regularize", "full"))
    assert built(torch.randn(2, *datamodule.input_shape)).shape == (2, 10)
    assert built.hparams.hidden_sizes == ([512, 256] if stage != "skeleton" else [128, 64] if model == "mlp" else [])
    assert set(dropouts(built)) == ({0.2} if stage in ("regularize", "full") else set())
    assert built.weight_decay == (0.05 if stage in ("regularize", "full") else None)


def test_command_line_wins_over_a_stage(compose_train) -> None:
    cfg = compose_train(
        "recipe=regularize", "model.dropout=0.0", "~augmentation", "model=cnn", "model.spatial_dropout=0.1"
    )
    assert cfg.model.dropout == 0.0 and cfg.model.spatial_dropout == 0.1 and cfg.data.augmentation is None
    assert compose_train("recipe=skeleton", "augmentation=shift_rotate").data.augmentation.max_shift == 1
