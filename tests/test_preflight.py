"""Preflight: the bug zoo is caught by the check that should catch it, and clean models pass every check."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from zoo import BUGS, CLEAN, TinyCausalLM, TokenDataModule

from lightning_tricks import assert_preflight, run_preflight
from lightning_tricks.callbacks import GradientDependencyProbe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_clean_models_pass_every_check(name: str) -> None:
    pl.seed_everything(0, verbose=False)
    model, dm = CLEAN[name]()
    report = assert_preflight(model, dm)  # raises with the Markdown report on any failure
    assert [r.name for r in report.results] == [
        "init_loss",
        "gradient_dependency",
        "overfit_batch",
        "input_independent_baseline",
        "shuffle",
    ]


@pytest.mark.parametrize("name", sorted(BUGS))
def test_every_planted_bug_is_caught_by_its_check(name: str) -> None:
    pl.seed_everything(0, verbose=False)
    build, check = BUGS[name]
    model, dm = build()
    report = run_preflight(model, dm)
    assert not report[check].passed, f"{name} not caught by {check}:\n{report}"
    assert not any("crashed" in r.message for r in report.results), report


def test_causal_probe_catches_attention_that_sees_the_future() -> None:
    data = TokenDataModule()
    # next-token targets: the sequence shifted by one
    data.y = torch.roll(data.x, -1, dims=1)
    for causal, should_pass in ((True, True), (False, False)):
        pl.seed_everything(0, verbose=False)
        report = run_preflight(TinyCausalLM(causal=causal), data, checks=[GradientDependencyProbe(causal=True)])
        result = report["gradient_dependency"]
        assert result.passed is should_pass, result.message
        if not should_pass:
            assert all(s > t for t, s in result.details["causal_violations"]) and result.details["causal_violations"]
