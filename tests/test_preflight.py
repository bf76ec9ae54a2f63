"""Preflight: the bug zoo is caught by the check that should catch it, and clean models pass every check."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from zoo import BUGS, CLEAN, TinyCausalLM, TinyTransformer, TokenDataModule

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
    assert report[check].failed, f"{name} not caught by {check}:\n{report}"  # a FAIL, not inconclusive
    assert not any("crashed" in r.message for r in report.results), report


def test_token_models_are_probed_at_the_embedding() -> None:
    class BatchMixingTransformer(TinyTransformer):
        def forward(self, tokens):
            h = self.embed(tokens) + self.pos
            h = h + h.mean(0, keepdim=True)  # BUG: batch statistics leak between sequences
            return self.head(self.encoder(h).mean(1))

    for model, should_pass in ((TinyTransformer(), True), (BatchMixingTransformer(), False)):
        pl.seed_everything(0, verbose=False)
        result = run_preflight(model, TokenDataModule(), checks=[GradientDependencyProbe()])["gradient_dependency"]
        assert result.passed is should_pass, result.message


def test_report_renders_and_goes_to_wandb(tmp_path) -> None:
    import json

    from lightning.pytorch.loggers import WandbLogger

    from lightning_tricks.testing import read_offline_run

    pl.seed_everything(0, verbose=False)
    model, dm = BUGS["last_layer_100x"][0]()
    logger = WandbLogger(project="lt-tests", save_dir=str(tmp_path), offline=True)
    report = run_preflight(model, dm, logger=logger)
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    assert "| init_loss | FAIL |" in report.to_markdown() and "1 of 5 checks failed" in report.to_markdown()
    saved = report.save(tmp_path / "report")
    assert json.loads((saved / "preflight.json").read_text())["checks"][0]["passed"] is False
    assert (saved / "preflight_overfit_batch_curve.png").exists()
    run = read_offline_run(run_dir)
    assert run.summary["tricks/init_loss/passed"] == 0.0 and run.summary["tricks/overfit_batch/passed"] == 1.0
    assert run.values("tricks/preflight/report/nrows") == [5]
    assert run.values("tricks/overfit_batch/curve/_type") == ["images/separated"]


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
