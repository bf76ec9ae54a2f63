"""Recipe 3.4 — LRRangeTest: a suggestion that can be trusted, a run left exactly as it was, one curve on all ranks."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, LearningRateFinder, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.tuner import Tuner

from lightning_tricks.callbacks import SeedEverything
from lightning_tricks.callbacks.lr_range_test import LRRangeTest, RangeTestResult, clone_optimizer, lr_range_test
from lightning_tricks.data import DigitsDataModule, SyntheticRegressionDataModule
from lightning_tricks.functional.lr_range import lr_sweep, smooth, steepest, suggest
from lightning_tricks.models import MLP
from lightning_tricks.testing import run_ddp


def digits_mlp(lr: float = 3e-4) -> tuple[DigitsDataModule, MLP]:
    torch.manual_seed(0)
    dm = DigitsDataModule(seed=0)
    return dm, MLP(input_shape=dm.input_shape, num_outputs=10, optimizer=partial(torch.optim.Adam, lr=lr))


def linear_regression() -> tuple[SyntheticRegressionDataModule, MLP]:
    """Plain SGD on a linear model: every LR in about [1e-2, 0.5] trains it well (benchmarked)."""
    torch.manual_seed(0)
    dm = SyntheticRegressionDataModule(seed=0)
    dm.setup("fit")
    model = MLP(dm.input_shape, dm.num_outputs, task="regression", hidden_sizes=[], optimizer=torch.optim.SGD)
    return dm, model


def trainer(tmp_path: Path, callbacks: list, epochs: int = 1, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=kwargs.pop("logger", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )


# --- the math -------------------------------------------------------------------------------------


def test_sweep_is_geometric_from_start_to_end() -> None:
    lrs = lr_sweep(1e-7, 1.0, 100)
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(1.0) and len(lrs) == 100
    assert np.allclose(lrs[1:] / lrs[:-1], 10 ** (7 / 99))


def test_smoothing_is_debiased() -> None:
    # A biased EMA starts at (1 - beta) * loss: 0.04 for a constant loss of 2, a fake "descent" to 2.
    assert smooth([2.0] * 50, beta=0.98) == pytest.approx([2.0] * 50)
    beta, losses = 0.9, [3.0, 1.0, 2.0]
    expected = [
        sum(beta ** (i - j) * (1 - beta) * losses[j] for j in range(i + 1)) / (1 - beta ** (i + 1)) for i in range(3)
    ]
    assert smooth(losses, beta=beta) == pytest.approx(expected)


def test_steepest_descent_is_taken_against_log_lr_not_lr() -> None:
    # loss = 2 - tanh(log10(lr) + 3): its steepest descent per decade is at lr = 1e-3, then it explodes.
    lrs = lr_sweep(1e-7, 1.0, 141)
    loss = 2 - np.tanh(np.log10(lrs) + 3)
    loss[lrs > 0.1] = 10.0
    assert suggest(lrs, loss, "steepest") == pytest.approx(1e-3, rel=0.15)
    # Lightning's rule (gradient against linear LR) lands orders of magnitude lower on the same curve.
    linear_rule = lrs[10:-1][np.argmin(np.gradient(loss[10:-1], lrs[10:-1]))]
    assert linear_rule < 1e-5
    assert steepest(lrs, loss) != int(np.argmin(np.gradient(loss, lrs)))


@pytest.mark.parametrize("rule", ["valley", "steepest", "minimum"])
def test_every_rule_lands_in_the_descent_on_a_clean_curve(rule: str) -> None:
    lrs = lr_sweep(1e-6, 1.0, 121)
    loss = 2 - np.tanh(np.log10(lrs) + 2.5)  # falls between ~1e-4 and ~1e-1 ...
    loss[lrs > 0.05] += (np.log10(lrs[lrs > 0.05]) + 1.3) * 20  # ... and blows up past 0.05
    assert 1e-4 <= suggest(lrs, loss, rule) <= 0.05


def test_a_custom_rule_is_used_and_unknown_names_are_refused() -> None:
    lrs, loss = lr_sweep(1e-3, 1, 10), np.linspace(3, 1, 10)
    assert suggest(lrs, loss, lambda lr, sm: 4) == pytest.approx(lrs[4])
    with pytest.raises(ValueError, match=r"`suggestion` must be one of .*'valley'.*got 'best'"):
        suggest(lrs, loss, "best")


# --- the function on real models ------------------------------------------------------------------


def test_linear_regression_suggestion_is_good_where_lightnings_is_not(tmp_path: Path) -> None:
    dm, model = linear_regression()
    result = lr_range_test(model, dm.train_dataloader(), torch.optim.SGD(model.parameters()))
    assert 1e-2 <= result.suggestion <= 0.5, result.suggestions
    # The same sweep with Lightning's Tuner: the suggestion documented in Lightning #21141-style reports.
    dm2, model2 = linear_regression()
    finder = Tuner(trainer(tmp_path, [], epochs=100)).lr_find(
        model2, datamodule=dm2, min_lr=1e-7, max_lr=1.0, num_training=100, update_attr=False
    )
    assert finder.suggestion() < 1e-3  # far below every LR that trains this model well


def test_the_model_optimizer_and_rng_are_left_as_they_were() -> None:
    dm, model = digits_mlp()
    dm.setup("fit")
    optimizer = model.configure_optimizers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    lr_range_test(model, dm.train_dataloader(), optimizer, num_steps=30)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert optimizer.state_dict()["state"] == {} and optimizer.param_groups[0]["lr"] == 3e-4
    assert torch.equal(torch.get_rng_state(), rng)


def test_param_groups_keep_their_ratio_during_the_sweep() -> None:
    dm, model = digits_mlp()
    dm.setup("fit")
    first, rest = list(model.net.parameters())[:2], list(model.net.parameters())[2:]
    optimizer = torch.optim.SGD([{"params": first, "lr": 0.1}, {"params": rest, "lr": 0.4}], momentum=0.9)
    seen: list[tuple[float, float]] = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            seen.append((self.param_groups[0]["lr"], self.param_groups[1]["lr"]))
            return super().step(closure)

    optimizer.__class__ = Recorder  # record what the clone (same class) is stepped with
    result = lr_range_test(model, dm.train_dataloader(), optimizer, num_steps=20, start_lr=1e-4, end_lr=1e-2)
    assert [a for a, _ in seen] == pytest.approx(result.lrs)
    assert all(b == pytest.approx(4 * a) for a, b in seen)
    assert clone_optimizer(optimizer).param_groups[1]["momentum"] == 0.9


def test_divergence_stops_the_sweep_and_can_be_switched_off() -> None:
    dm, model = linear_regression()
    stopped = lr_range_test(model, dm.train_dataloader(), num_steps=60, start_lr=1e-4, end_lr=100)
    full = lr_range_test(model, dm.train_dataloader(), num_steps=60, start_lr=1e-4, end_lr=100, diverge_factor=None)
    assert stopped.stopped_early and len(stopped.lrs) < 60
    assert not full.stopped_early and len(full.lrs) == 60
    assert not all(math.isfinite(v) for v in full.losses[-5:]) or full.losses[-1] > 100 * min(full.losses)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_lr": -1.0}, "`start_lr` must be a finite number >= 0, got -1.0"),
        ({"start_lr": 1.0, "end_lr": 0.1}, r"`end_lr` \(0.1\) must be larger than `start_lr` \(1.0\)"),
        ({"start_lr": 0.0}, "exponential sweep needs `start_lr` > 0"),
        ({"mode": "cosine"}, "`mode` must be one of .*got 'cosine'"),
        ({"num_steps": 1}, "`num_steps` must be an integer >= 2, got 1"),
        ({"smoothing": 1.0}, r"`smoothing` must be a number in \[0, 1\), got 1.0"),
        ({"diverge_factor": 0.5}, "`diverge_factor` must be None or a number > 1, got 0.5"),
        ({"suggestion": "best"}, "`suggestion` must be one of"),
        ({"apply": "yes"}, "`apply` must be True or False, got 'yes'"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LRRangeTest(**kwargs)


# --- the callback in a fit ------------------------------------------------------------------------


class LRSeen(Callback):
    """The LRs of the run's optimizer at the first training step, and the weights at every epoch end."""

    def __init__(self) -> None:
        self.first_lrs: list[float] | None = None
        self.first_step: tuple[int, int, int] | None = None
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_lrs is None:
            self.first_lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
            self.first_step = (trainer.global_step, trainer.current_epoch, len(trainer.optimizers[0].state))
        self.batches += 1


def fit_digits(tmp_path: Path, callbacks: list, epochs: int = 2, ckpt_path: str | None = None, **kwargs):
    dm, model = digits_mlp()
    seen = LRSeen()
    run = trainer(tmp_path, [*callbacks, seen], epochs=epochs, **kwargs)
    run.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return run, model, seen


def test_a_run_with_the_test_is_the_run_without_it(tmp_path: Path) -> None:
    callback = LRRangeTest(num_steps=40)
    run_a, model_a, _ = fit_digits(tmp_path / "a", [callback])
    run_b, model_b, _ = fit_digits(tmp_path / "b", [])
    assert callback.result is not None and len(callback.result.lrs) >= 10
    assert run_a.global_step == run_b.global_step
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # same weights bit for bit: nothing of the run was perturbed
    # ... and applying the suggestion does change the run (the comparison above can fail).
    _, model_c, seen = fit_digits(tmp_path / "c", [LRRangeTest(num_steps=40, apply=True)])
    assert not torch.equal(model_c.net[-1].weight, model_b.net[-1].weight)
    assert seen.first_lrs is not None and seen.first_lrs[0] != 3e-4


def test_apply_sets_the_suggestion_and_the_scheduler_follows(tmp_path: Path) -> None:
    dm, _ = digits_mlp()
    torch.manual_seed(0)
    model = MLP(
        dm.input_shape,
        10,
        optimizer=partial(torch.optim.Adam, lr=3e-4),  # what Hydra's `_partial_: true` gives
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    )
    callback, seen = LRRangeTest(num_steps=40, apply=True), LRSeen()
    lrs_per_epoch: list[float] = []

    class EpochLR(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            lrs_per_epoch.append(trainer.optimizers[0].param_groups[0]["lr"])

    run = trainer(tmp_path, [callback, seen, EpochLR()], epochs=3)
    run.fit(model, datamodule=dm)
    suggestion = callback.result.suggestion
    assert callback.applied_lr == suggestion and seen.first_lrs == [pytest.approx(suggestion)]
    assert lrs_per_epoch == pytest.approx([suggestion, suggestion / 2, suggestion / 4])


def test_resume_keeps_the_run_state_where_lightnings_finder_restarts_it(tmp_path: Path) -> None:
    def interrupted(make_callback, where: Path):
        # SeedEverything restores the RNG from the checkpoint, so epoch 2 shuffles as it would have.
        ckpt = ModelCheckpoint(dirpath=where, save_last=True)
        fit_digits(where, [SeedEverything(0), make_callback(), ckpt], epochs=1, enable_checkpointing=True)
        return fit_digits(where, [SeedEverything(0), make_callback()], epochs=2, ckpt_path=str(where / "last.ckpt"))

    run, model, seen = interrupted(lambda: LRRangeTest(num_steps=30), tmp_path / "ours")
    _, uninterrupted, _ = fit_digits(tmp_path / "plain", [SeedEverything(0), LRRangeTest(num_steps=30)], epochs=2)
    steps_per_epoch = run.global_step // 2
    assert seen.first_step == (steps_per_epoch, 1, 6)  # step, epoch and Adam's state continue
    assert seen.batches == steps_per_epoch  # only the second epoch ran
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), uninterrupted.parameters(), strict=True))
    resumed_callback = next(c for c in run.callbacks if isinstance(c, LRRangeTest))
    assert isinstance(resumed_callback.result, RangeTestResult)  # restored from the checkpoint, not re-run

    # Lightning's LearningRateFinder as a callback on the same resume: back to step 0, empty optimizer state.
    _, _, seen_lightning = interrupted(
        lambda: LearningRateFinder(num_training_steps=30, update_attr=False), tmp_path / "lightning"
    )
    assert seen_lightning.first_step == (0, 0, 0) and seen_lightning.batches == 2 * steps_per_epoch


def test_curve_and_suggestion_are_logged(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv", version="")
    fit_digits(tmp_path, [LRRangeTest(num_steps=30)], epochs=1, logger=logger)
    metrics = (Path(logger.log_dir) / "metrics.csv").read_text()
    for key in ("suggestion", "valley", "steepest", "minimum"):
        assert f"tricks/lr_range_test/{key}" in metrics
    pictures = list(tmp_path.rglob("*lr_range_test*curve*.png"))
    tables = list(tmp_path.rglob("*lr_range_test*table*.csv"))
    assert pictures and tables
    assert tables[0].read_text().splitlines()[0] == "lr,loss,smoothed"


def ddp_range_test(devices: int) -> dict:
    dm, model = digits_mlp()
    callback, seen = LRRangeTest(num_steps=30, apply=True), LRSeen()
    run = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[callback, seen],
    )
    run.fit(model, datamodule=dm)
    return {"result": callback.result, "lr_used": seen.first_lrs[0], "weights": model.net[-1].weight.detach().clone()}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_read_one_curve_and_use_one_suggestion() -> None:
    rank0, rank1 = run_ddp(ddp_range_test, devices=2, timeout=240)
    assert rank0["result"].losses == rank1["result"].losses  # losses averaged over ranks each step
    assert rank0["result"].suggestion == rank1["result"].suggestion
    assert rank0["lr_used"] == rank1["lr_used"] == pytest.approx(rank0["result"].suggestion, rel=1e-12)
    assert torch.equal(rank0["weights"], rank1["weights"])


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_lr_find_command_prints_and_saves_the_suggestion(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_tricks",
            "lr-find",
            f"hydra.run.dir={out}",
            "lr_range_test.num_steps=40",
            "lr_range_test.end_lr=0.01",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "lr_range_test.json").read_text())
    assert f"suggested lr: {saved['suggestion']:.3e} (steepest" in proc.stdout
    assert set(saved["suggestions"]) == {"steepest", "valley", "minimum"}
    assert (out / "lr_range_test.png").stat().st_size > 10_000
    assert len((out / "lr_range_test.csv").read_text().splitlines()) == 41  # header + one row per step
    bad = subprocess.run(
        [sys.executable, "-m", "lightning_tricks", "lr-find", f"hydra.run.dir={out}", "lr_range_test.mode=cosine"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert bad.returncode != 0 and "`mode` must be one of ('exponential', 'linear'), got 'cosine'" in bad.stderr


@pytest.mark.parametrize("range_test_first", [True, False])
def test_with_lr_batch_scaling_the_suggestion_is_not_scaled_again(tmp_path: Path, range_test_first: bool) -> None:
    from lightning_tricks.callbacks.lr_batch_scaling import LRBatchScaling

    range_test, scaling = LRRangeTest(num_steps=30, apply=True), LRBatchScaling(reference_batch_size=16)
    callbacks = [range_test, scaling] if range_test_first else [scaling, range_test]
    with pytest.warns(UserWarning, match="not scaled again"):
        _, _, seen = fit_digits(tmp_path, callbacks, epochs=1)
    assert scaling.factor == 1.0  # batch 64 vs reference 16 would have been x4
    assert seen.first_lrs == [pytest.approx(range_test.result.suggestion, rel=1e-12)]
