"""The checks as callbacks of a real fit: on_failure modes, once at fit start, nothing perturbed, clear errors."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from zoo import NaNInputsDigits, huge_last_layer

from lightning_tricks import (
    GradientDependencyProbe,
    InitLossCheck,
    InputIndependentBaseline,
    OverfitBatchCheck,
    RecipeCheckError,
    SeedEverything,
    ShuffleCheck,
    TrainingHealthCheck,
    run_preflight,
)
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP
from lightning_tricks.preflight import default_checks
from lightning_tricks.utilities.protocol import AdapterError


def trainer(tmp_path: Path, callbacks: list, **kwargs) -> pl.Trainer:
    settings = dict(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(callbacks=callbacks, **{**settings, **kwargs})


def mlp(**kwargs) -> MLP:
    return MLP(input_shape=(1, 8, 8), num_outputs=10, **kwargs)


def test_raise_stops_before_the_first_step_and_says_what_and_why(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    t = trainer(tmp_path, [InitLossCheck(on_failure="raise"), ckpt], enable_checkpointing=True)
    with pytest.raises(RecipeCheckError, match=r"\[init_loss\] initial loss .*expected .*too large") as err:
        t.fit(huge_last_layer(), datamodule=DigitsDataModule(seed=0))
    assert t.global_step == 0 and not (tmp_path / "ckpt").exists()
    assert err.value.result.measured > 2 * err.value.result.expected


def test_warn_goes_on_and_ignore_keeps_the_result(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    check = InitLossCheck(on_failure="warn")
    t = trainer(tmp_path, [check], limit_train_batches=2, limit_val_batches=1)
    with caplog.at_level("INFO", logger="lightning_tricks"):
        t.fit(huge_last_layer(), datamodule=DigitsDataModule(seed=0))
    # The verdict is one WARNING log record of ours (no Python warning with a source-file prefix).
    (verdict,) = [r for r in caplog.records if r.name.startswith("lightning_tricks") and "[init_loss]" in r.message]
    assert verdict.levelname == "WARNING" and verdict.getMessage().startswith("[init_loss] FAIL: initial loss")
    assert t.global_step == 2 and check.result.passed is False
    quiet = InitLossCheck(on_failure="ignore")
    trainer(tmp_path, [quiet], limit_train_batches=1, limit_val_batches=1).fit(
        huge_last_layer(), datamodule=DigitsDataModule(seed=0)
    )
    assert quiet.result.passed is False


def fit_weights(tmp_path: Path, callbacks: list) -> np.ndarray:
    pl.seed_everything(0, verbose=False)
    model, dm = mlp(dropout=0.2), DigitsDataModule(seed=0, batch_size=32)
    trainer(tmp_path, [SeedEverything(0), *callbacks], max_epochs=2).fit(model, datamodule=dm)
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()


def test_the_checks_do_not_perturb_the_run(tmp_path: Path) -> None:
    """Same seed, with and without every check: the trained weights are bit-identical."""
    checks = [*default_checks(), TrainingHealthCheck(window=40, on_failure="raise")]
    with_checks = fit_weights(tmp_path / "a", checks)
    assert all(c.result is not None and c.result.passed for c in checks)
    assert np.array_equal(with_checks, fit_weights(tmp_path / "b", []))


def test_checks_run_once_not_again_on_resume(tmp_path: Path) -> None:
    dm = DigitsDataModule(seed=0)
    model = mlp()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(tmp_path, [ckpt], enable_checkpointing=True).fit(model, datamodule=dm)
    skipped, rerun = InitLossCheck(), InitLossCheck(run_on_resume=True)
    trainer(tmp_path, [skipped, rerun], max_epochs=2).fit(model, datamodule=dm, ckpt_path=tmp_path / "last.ckpt")
    assert skipped.result is None and rerun.result is not None


def test_training_health_passes_a_learning_model_and_names_the_step_of_a_diverging_one(tmp_path: Path) -> None:
    healthy = TrainingHealthCheck(window=20, on_failure="raise")
    trainer(tmp_path, [healthy]).fit(mlp(optimizer=partial(torch.optim.Adam, lr=1e-3)), datamodule=DigitsDataModule())
    assert healthy.result.passed and healthy.result.details["last_mean"] < healthy.result.details["first_mean"]

    diverging = TrainingHealthCheck(window=20, on_failure="raise")
    with pytest.raises(
        RecipeCheckError,
        match=r"\[training_health\] .*(rising|jumped to .* at step \d+|is (nan|inf) at step \d+)",
    ):
        trainer(tmp_path, [diverging]).fit(
            mlp(optimizer=partial(torch.optim.SGD, lr=50.0)), datamodule=DigitsDataModule()
        )

    nan = TrainingHealthCheck(window=20, on_failure="ignore")
    trainer(tmp_path, [nan], limit_train_batches=3, limit_val_batches=0).fit(mlp(), datamodule=NaNInputsDigits())
    assert not nan.result.passed and "is nan at step 1" in nan.result.message


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: InitLossCheck(on_failure="explode"),
            r"`on_failure` must be one of 'raise', 'warn', 'ignore', got 'explode'",
        ),
        (lambda: InitLossCheck(num_batches=0), r"`num_batches` must be an integer >= 1, got 0"),
        (lambda: InitLossCheck(rtol=-1), r"`rtol` must be a number > 0, got -1"),
        (lambda: GradientDependencyProbe(rtol=2), r"`rtol` must be a number in \(0, 1\), got 2"),
        (lambda: OverfitBatchCheck(max_steps=0), r"`max_steps` must be an integer >= 1, got 0"),
        (lambda: OverfitBatchCheck(rel_threshold=1.5), r"`rel_threshold` must be a number in \(0, 1\), got 1.5"),
        (lambda: InputIndependentBaseline(margin=1), r"`margin` must be a number in \[0, 1\), got 1"),
        (lambda: ShuffleCheck(num_batches=1), r"`num_batches` must be an integer >= 2, got 1"),
        (lambda: TrainingHealthCheck(window=2), r"`window` must be an integer >= 5, got 2"),
        (lambda: InitLossCheck(task="ranking"), r"`task` must be one of .* got 'ranking'"),
    ],
)
def test_bad_arguments_are_named(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_a_model_the_checks_cannot_read_is_an_error_not_a_finding() -> None:
    class DictData(pl.LightningDataModule):
        def train_dataloader(self):
            data = [{"pixels": torch.randn(64), "truth": torch.tensor(1)} for _ in range(8)]
            return torch.utils.data.DataLoader(data, batch_size=4)

    with pytest.raises(AdapterError, match=r"\['pixels', 'truth'\].*split_batch"):
        run_preflight(MLP(input_shape=(64,), num_outputs=2), DictData(), checks=[InitLossCheck()])
    report = run_preflight(
        MLP(input_shape=(64,), num_outputs=2),
        DictData(),
        checks=[InitLossCheck(split_batch=lambda b: (b["pixels"], b["truth"]))],
    )
    assert report["init_loss"].passed


@pytest.mark.parametrize("from_data", [False, True])
def test_init_loss_expectation_follows_a_bias_set_from_the_data(tmp_path: Path, from_data: bool) -> None:
    """1:10 imbalance, zero weights: the loss is exactly ln 2 at bias 0, exactly H(1/11) at bias logit(1/11)."""
    from lightning_tricks.data import SyntheticClassificationDataModule

    dm = SyntheticClassificationDataModule(num_samples=2200, num_classes=2, priors=[10 / 11, 1 / 11], task="binary")
    model = MLP(input_shape=(16,), num_outputs=1, task="binary")
    p = 1 / 11
    with torch.no_grad():
        model.net[-1].weight.zero_()
        model.net[-1].bias.fill_(np.log(p / (1 - p)) if from_data else 0.0)
    check = InitLossCheck(num_batches=8, on_failure="raise")
    run_preflight(model, dm, checks=[check])
    assert check.result.passed and check.result.details["bias_from_data"] is from_data
    if from_data:
        # measured = BCE of the constant prediction p on the batch's targets = expected, both from the same batch
        assert check.result.measured == pytest.approx(check.result.expected, abs=1e-6)
        assert check.result.expected == pytest.approx(-(p * np.log(p) + (1 - p) * np.log(1 - p)), abs=0.1)
    else:
        assert check.result.measured == pytest.approx(np.log(2), abs=1e-6) == check.result.expected


@pytest.mark.parametrize("shuffle", [False, True])
def test_shuffle_check_is_not_fooled_by_augmentation(shuffle: bool) -> None:
    """Random shifts make every epoch's batches differ; only a shuffling sampler may pass."""
    from lightning_tricks.data import RandomShiftRotate

    dm = DigitsDataModule(seed=0, shuffle=shuffle, augmentation=RandomShiftRotate(max_shift=1, max_degrees=10.0))
    check = ShuffleCheck(on_failure="warn")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[check],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(MLP(dm.input_shape, dm.num_outputs), datamodule=dm)
    assert check.result.passed is shuffle
    assert check.result.details["order_repeats"] is (not shuffle)
