"""lightning_tricks.schedules: every policy equals its closed form, alone, in a Lightning fit, resumed, and from Hydra.

Expected numbers are written out by hand (0.1 * 0.5**3), not computed with the library's functions.
"""

from __future__ import annotations

import io
import math
import runpy
import sys
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate

from lightning_tricks.commands.train import build
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP
from lightning_tricks.models.base import scheduler_interval
from lightning_tricks.schedules import (
    POLICIES,
    Cyclical,
    Exp,
    Fixed,
    Inv,
    MultiStep,
    Poly,
    Sigmoid,
    Step,
    make_scheduler,
)

REPO = Path(__file__).resolve().parents[1]


def sgd(*lrs: float) -> torch.optim.SGD:
    """An optimizer with one param group per learning rate."""
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def lrs_used(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    """The LR of every group at iterations 0..steps-1, read before each optimizer step, as in training."""
    used = []
    for _ in range(steps):
        used.append([group["lr"] for group in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return used


# (scheduler on lr=0.1, {iteration: LR written out by hand})
CLOSED_FORMS = {
    "fixed": (partial(Fixed), {0: 0.1, 17: 0.1, 45: 0.1}),
    "step": (partial(Step, stepsize=10, gamma=0.5), {0: 0.1, 9: 0.1, 10: 0.05, 19: 0.05, 20: 0.025, 35: 0.1 * 0.5**3}),
    "exp": (partial(Exp, gamma=0.9), {0: 0.1, 1: 0.09, 2: 0.081, 5: 0.1 * 0.9**5, 40: 0.1 * 0.9**40}),
    "inv": (partial(Inv, gamma=0.5, power=2.0), {0: 0.1, 2: 0.1 / 4, 6: 0.1 / 16, 40: 0.1 / 21**2}),
    "multistep": (
        partial(MultiStep, stepvalues=[5, 12, 30], gamma=0.5),
        {0: 0.1, 4: 0.1, 5: 0.05, 11: 0.05, 12: 0.025, 29: 0.025, 30: 0.0125, 45: 0.0125},
    ),
    "poly": (
        partial(Poly, max_iter=40, power=2.0),
        {0: 0.1, 10: 0.1 * 0.75**2, 20: 0.025, 39: 0.1 / 40**2, 40: 0.0, 45: 0.0},
    ),
    "sigmoid": (
        partial(Sigmoid, gamma=-0.5, stepsize=20),
        {0: 0.1 / (1 + math.exp(-10)), 20: 0.05, 22: 0.1 / (1 + math.e), 40: 0.1 / (1 + math.exp(10))},
    ),
    "sigmoid_rising": (partial(Sigmoid, gamma=0.5, stepsize=20), {0: 0.1 / (1 + math.exp(10)), 20: 0.05}),
    # Smith's CLR between 0.1 and 0.5, half a cycle = 10 iterations.
    "triangular": (
        partial(Cyclical, max_lr=0.5, stepsize=10),
        {0: 0.1, 5: 0.3, 10: 0.5, 15: 0.3, 20: 0.1, 25: 0.3, 30: 0.5, 40: 0.1},
    ),
    "triangular2": (  # the amplitude (0.4) halves every cycle: peaks 0.5, 0.3, 0.2
        partial(Cyclical, max_lr=0.5, stepsize=10, mode="triangular2"),
        {0: 0.1, 10: 0.5, 20: 0.1, 30: 0.3, 40: 0.1, 45: 0.15},
    ),
    "exp_range": (  # the amplitude is scaled by gamma ** it
        partial(Cyclical, max_lr=0.5, stepsize=10, mode="exp_range", gamma=0.9),
        {0: 0.1, 10: 0.1 + 0.4 * 0.9**10, 20: 0.1, 30: 0.1 + 0.4 * 0.9**30, 35: 0.1 + 0.2 * 0.9**35},
    ),
}


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_each_policy_equals_its_closed_form(name: str) -> None:
    factory, expected = CLOSED_FORMS[name]
    used = lrs_used(factory(sgd(0.1)), 46)
    assert {it: used[it][0] for it in expected} == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_warmup_multiplies_the_policy_which_keeps_counting() -> None:
    # Factor 0.2 -> 1 over 4 iterations, times the step policy (which halves at 10 whatever the warmup).
    used = lrs_used(Step(sgd(0.1), stepsize=10, gamma=0.5, warmup_iters=4, warmup_start_factor=0.2), 12)
    expected = {0: 0.02, 1: 0.04, 2: 0.06, 3: 0.08, 4: 0.1, 9: 0.1, 10: 0.05}
    assert {it: used[it][0] for it in expected} == pytest.approx(expected)
    # the same on a cyclical schedule: the warmup scales its lower bound too
    used = lrs_used(Cyclical(sgd(0.1), max_lr=0.5, stepsize=10, warmup_iters=5, warmup_start_factor=0.0), 11)
    assert [used[it][0] for it in (0, 5, 10)] == pytest.approx([0.0, 0.3, 0.5])


# Every policy, with arguments that make the LR move within 46 iterations.
EVERY_POLICY = {
    "fixed": {"warmup_iters": 5},
    "step": {"stepsize": 10, "gamma": 0.5},
    "exp": {"gamma": 0.9},
    "inv": {"gamma": 0.5, "power": 2.0},
    "multistep": {"stepvalues": [5, 12, 30]},
    "poly": {"max_iter": 60, "power": 2.0},
    "sigmoid": {"gamma": -0.5, "stepsize": 20},
    "cyclical": {"max_lr": 0.5, "stepsize": 10, "mode": "triangular2"},
}


def test_every_policy_name_is_tested() -> None:
    assert (
        set(EVERY_POLICY)
        == set(POLICIES)
        == {
            "fixed",
            "step",
            "exp",
            "inv",
            "multistep",
            "poly",
            "sigmoid",
            "cyclical",
        }
    )


@pytest.mark.parametrize("policy", EVERY_POLICY)
def test_param_groups_keep_their_ratios(policy: str) -> None:
    used = lrs_used(make_scheduler(policy, sgd(0.1, 0.01), **EVERY_POLICY[policy]), 46)
    alone = lrs_used(make_scheduler(policy, sgd(0.1), **EVERY_POLICY[policy]), 46)
    assert [lrs[0] for lrs in used] == [lrs[0] for lrs in alone]
    assert [lrs[1] for lrs in used] == pytest.approx([lrs[0] / 10 for lrs in used], rel=1e-12)
    assert len({round(lrs[0], 12) for lrs in used}) > 1, "the schedule never moved: the test would prove nothing"


def test_cyclical_takes_one_upper_bound_per_group() -> None:
    used = lrs_used(Cyclical(sgd(0.1, 0.01), max_lr=[0.5, 0.02], stepsize=10), 21)
    assert used[10] == pytest.approx([0.5, 0.02]) and used[20] == pytest.approx([0.1, 0.01])


@pytest.mark.parametrize("policy", EVERY_POLICY)
def test_checkpoint_round_trip_continues_exactly(policy: str) -> None:
    kwargs = {**EVERY_POLICY[policy], "warmup_iters": 8}
    uninterrupted = lrs_used(make_scheduler(policy, sgd(0.1, 0.01), **kwargs), 47)

    first = make_scheduler(policy, sgd(0.1, 0.01), **kwargs)
    before = lrs_used(first, 17)
    buffer = io.BytesIO()
    torch.save({"scheduler": first.state_dict(), "optimizer": first.optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # what Lightning's checkpoint loading accepts

    # A fresh optimizer and scheduler, as in a resumed process: the saved state, then on.
    optimizer = sgd(0.1, 0.01)
    resumed = make_scheduler(policy, optimizer, **kwargs)
    optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert before + lrs_used(resumed, 30) == uninterrupted

    # Closed form: the scheduler's state alone is enough, whatever LR the optimizer holds
    # (a recursive lr *= gamma scheduler would continue from the fresh optimizer's 0.1 here).
    alone = make_scheduler(policy, sgd(0.1, 0.01), **kwargs)
    alone.load_state_dict(saved["scheduler"])
    alone.step()  # iteration 18
    assert [group["lr"] for group in alone.optimizer.param_groups] == uninterrupted[18]


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (partial(Step, stepsize=10, gamma=-0.1), r"Step: `gamma` must be a decay factor in \(0, 1\], got -0.1\."),
        (partial(Step, stepsize=10, gamma=10), r"Step: `gamma` must be a decay factor in \(0, 1\], got 10\."),
        (partial(Step, stepsize=0), r"Step: `stepsize` must be an integer >= 1, got 0\."),
        (partial(Step, stepsize=2.5), r"Step: `stepsize` must be an integer >= 1, got 2\.5\."),
        (partial(Exp, gamma=1.5), r"Exp: `gamma` must be a decay factor in \(0, 1\], got 1\.5\."),
        (partial(Inv, gamma=-1.0, power=0.75), r"Inv: `gamma` must be a number >= 0, got -1\.0\."),
        (partial(Inv, gamma=1e-4, power=-0.75), r"Inv: `power` must be a number >= 0, got -0\.75\."),
        (partial(MultiStep, stepvalues=[30, 10]), r"MultiStep: `stepvalues` must be .*strictly increasing.*\[30, 10\]"),
        (partial(MultiStep, stepvalues=[10, 10]), r"MultiStep: `stepvalues` .*got \[10, 10\]"),
        (partial(MultiStep, stepvalues=[]), r"MultiStep: `stepvalues` must be a non-empty.*got \[\]"),
        (partial(MultiStep, stepvalues=[0, 5]), r"MultiStep: `stepvalues` .*integers >= 1, got \[0, 5\]"),
        (partial(Poly, max_iter=None), r"Poly: `max_iter` must be an integer >= 1 .*got None.*ReferenceModule"),
        (partial(Poly, max_iter=0), r"Poly: `max_iter` must be an integer >= 1, got 0\."),
        (partial(Poly, max_iter=100, power=-1), r"Poly: `power` must be a number >= 0, got -1\."),
        (partial(Sigmoid, gamma=0, stepsize=10), r"Sigmoid: `gamma` must be a non-zero number .*got 0\."),
        (partial(Sigmoid, gamma=float("nan"), stepsize=10), r"Sigmoid: `gamma` must be .*got nan\."),
        (partial(Sigmoid, gamma=-0.1, stepsize=-5), r"Sigmoid: `stepsize` must be an integer >= 1, got -5\."),
        (partial(Cyclical, max_lr=0.5, stepsize=10, mode="triangle"), r"Cyclical: `mode` must be one of .*'triangle'"),
        (partial(Cyclical, max_lr=0.05, stepsize=10), r"Cyclical: `max_lr` must be >= .*max_lr=0\.05 < lr=0\.1"),
        (partial(Cyclical, max_lr=[0.5], stepsize=10), r"Cyclical: `max_lr` must be one float or one per param"),
        (partial(Cyclical, max_lr=0.5, stepsize=10, gamma=0.0), r"Cyclical: `gamma` must be a factor in \(0, 1\]"),
        (partial(Fixed, warmup_iters=-1), r"Fixed: `warmup_iters` must be an integer >= 0, got -1\."),
        (partial(Step, stepsize=5, warmup_start_factor=1.5), r"Step: `warmup_start_factor` must be .*\[0, 1\].*1\.5"),
        (partial(Exp, gamma=0.9, interval="batch"), r"Exp: `interval` must be one of \('step', 'epoch'\), got 'batch'"),
    ],
)
def test_bad_arguments_fail_at_construction_naming_them(factory: partial, match: str) -> None:
    optimizer = sgd(0.1, 0.1) if factory.keywords.get("max_lr") == [0.5] else sgd(0.1)
    with pytest.raises(ValueError, match=match):
        factory(optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.1  # nothing touched


def test_make_scheduler_knows_caffes_names_and_refuses_others() -> None:
    assert type(make_scheduler("multistep", sgd(0.1), stepvalues=[3])) is MultiStep
    assert type(make_scheduler("inv", sgd(0.1), gamma=1e-4, power=0.75)) is Inv
    with pytest.raises(ValueError, match=r"`policy` must be one of \['cyclical', 'exp', .*'step'\], got 'cosine'"):
        make_scheduler("cosine", sgd(0.1))


def test_interval_is_read_from_the_factory() -> None:
    assert scheduler_interval(partial(Step, stepsize=3)) == "step"  # Caffe's iteration: a batch
    assert scheduler_interval(partial(Poly, max_iter=None, interval="epoch")) == "epoch"
    assert scheduler_interval(partial(torch.optim.lr_scheduler.StepLR, step_size=3)) == "epoch"  # Lightning's default


def test_lightning_cli_factories_keep_interval_and_max_iter() -> None:
    """jsonargparse's factory is a partial of a (*args, **kwargs) wrapper holding every argument."""
    jsonargparse = pytest.importorskip("jsonargparse")
    from lightning.pytorch.cli import LRSchedulerCallable

    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--scheduler", type=LRSchedulerCallable)
    node = {"class_path": "lightning_tricks.schedules.Poly", "init_args": {"power": 2.0}}
    factory = parser.instantiate(parser.parse_object({"scheduler": node})).scheduler
    assert factory.keywords["max_iter"] is None  # left to ReferenceModule
    assert scheduler_interval(factory) == "step"  # Poly's default, not Lightning's "epoch"


# --- in a real Lightning fit ------------------------------------------------------------------


class RecordLR(pl.Callback):
    """The LR of the first param group at every training batch, before the optimizer step."""

    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def tiny_fit(
    scheduler, max_epochs: int = 2, batches: int = 6, ckpt_path: Path | None = None, **trainer_kwargs
) -> tuple[pl.Trainer, RecordLR]:
    """A small MLP on digits with SGD at 0.1, ``batches`` steps per epoch, no validation, no files."""
    datamodule = DigitsDataModule(batch_size=32, seed=0)
    model = MLP(
        input_shape=(1, 8, 8),
        num_outputs=10,
        hidden_sizes=[16],
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=scheduler,
    )
    recorder = RecordLR()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, recorder


def test_lightning_fit_steps_the_schedule_every_batch() -> None:
    trainer, recorder = tiny_fit(partial(Step, stepsize=4, gamma=0.5, warmup_iters=2, warmup_start_factor=0.5))
    assert trainer.lr_scheduler_configs[0].interval == "step"
    expected = [0.05, 0.075, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.025]
    assert list(recorder.lrs) == list(range(12))
    assert list(recorder.lrs.values()) == pytest.approx(expected)


@pytest.mark.parametrize(("interval", "max_iter"), [("step", 12), ("epoch", 3)])
def test_reference_module_fills_max_iter_with_the_run_length(interval: str, max_iter: int) -> None:
    trainer, recorder = tiny_fit(partial(Poly, max_iter=None, interval=interval), max_epochs=3, batches=4)
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == interval and config.scheduler.max_iter == max_iter
    if interval == "step":  # 0.1 * (1 - step / 12), never 0 while training
        expected = [0.1 * (12 - step) / 12 for step in range(12)]
    else:  # constant within an epoch: 0.1, 0.1 * 2/3, 0.1 * 1/3
        expected = [0.1 * (3 - step // 4) / 3 for step in range(12)]
    assert list(recorder.lrs.values()) == pytest.approx(expected)


def test_max_iter_none_without_a_run_length_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"`max_iter=None` needs the run's length.*max_steps or max_epochs"):
        tiny_fit(partial(Poly, max_iter=None), max_epochs=-1)


def test_lightning_resume_continues_the_schedule(tmp_path: Path) -> None:
    schedule = partial(MultiStep, stepvalues=[5, 9], gamma=0.5, warmup_iters=3)
    _, whole = tiny_fit(schedule, max_epochs=3, batches=4)
    first, _ = tiny_fit(schedule, max_epochs=1, batches=4, default_root_dir=tmp_path)
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    _, resumed = tiny_fit(schedule, max_epochs=3, batches=4, ckpt_path=tmp_path / "epoch1.ckpt")
    assert list(resumed.lrs) == list(range(4, 12))
    assert resumed.lrs == {step: lr for step, lr in whole.lrs.items() if step >= 4}
    assert len(set(resumed.lrs.values())) > 1, "the schedule never moved after the resume point"


# --- from the Hydra config ------------------------------------------------------------------------


def test_hydra_scheduler_option_reaches_the_model_and_lightning(compose_train) -> None:
    cfg = compose_train("scheduler=step", "model.scheduler.warmup_iters=40", "model.scheduler.gamma=0.25")
    assert cfg.model.scheduler._target_ == "lightning_tricks.schedules.Step"
    _, module, _ = build(cfg)
    configured = module.configure_optimizers()
    scheduler = configured["lr_scheduler"]["scheduler"]
    assert type(scheduler) is Step and configured["lr_scheduler"]["interval"] == "step"
    assert (scheduler.stepsize, scheduler.gamma, scheduler.warmup_iters) == (100, 0.25, 40)
    assert scheduler.optimizer is configured["optimizer"]


@pytest.mark.parametrize("overrides", [[], ["scheduler=none"], ["scheduler=step", "scheduler=none"]])
def test_hydra_scheduler_none_means_no_scheduler(overrides: list[str], compose_train) -> None:
    cfg = compose_train(*overrides)
    assert cfg.model.scheduler is None
    _, module, _ = build(cfg)
    assert isinstance(module.configure_optimizers(), torch.optim.Optimizer)


def test_every_hydra_scheduler_option_builds_on_the_models_optimizer(compose_train) -> None:
    """The YAML defaults pass the constructors' checks with the models' own optimizer (cyclical: max_lr >= lr)."""
    options = sorted(p.stem for p in (REPO / "conf" / "scheduler").glob("*.yaml"))
    assert set(options) == {"none", *POLICIES}
    for option in set(options) - {"none"}:
        cfg = compose_train(f"scheduler={option}", "model=cnn")
        factory = instantiate(cfg.model.scheduler, _convert_="all")
        if factory.keywords.get("max_iter", 0) is None:
            factory = partial(factory, max_iter=400)  # what ReferenceModule does from the Trainer
        _, module, _ = build(cfg)
        scheduler = factory(module.optimizer_factory(module.parameters()))
        assert type(scheduler) is POLICIES[option] and scheduler.interval == "step"


def test_hydra_poly_run_gets_max_iter_from_the_trainer(compose_train) -> None:
    cfg = compose_train(
        "scheduler=poly",
        "recipe=none",
        "logger=none",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_checkpointing=false",
    )
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    config = trainer.lr_scheduler_configs[0]
    assert type(config.scheduler) is Poly and config.interval == "step"
    assert config.scheduler.max_iter == 6  # 2 epochs x 3 batches
    assert config.scheduler.get_last_lr() == pytest.approx([0.0])  # the end of the run: poly reaches 0


# --- the example ---------------------------------------------------------------------------------


def test_example_plots_every_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "policies.png"
    monkeypatch.setattr(sys, "argv", ["lr_policies.py", str(out)])
    namespace = runpy.run_path(str(REPO / "examples" / "lr_policies.py"), run_name="__main__")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(namespace["SETTINGS"]) == set(POLICIES)
