"""The verdict benchmark's fast subset (``benchmarks/bench_verdicts.py`` runs all of it).

Clean configurations must get no FAIL (an inconclusive verdict is allowed: the budget was too small to
decide); each planted bug must get a FAIL from a check named for it. And, both ways, the two findings
the benchmark added to the checks: the wrong class count (InitLossCheck) and dropout left on at
evaluation (GradientDependencyProbe).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from verdict_cases import DropoutAtEval, TimeMajorView, bug_cases, clean_cases

from lightning_tricks import GradientDependencyProbe, InitLossCheck, OverfitBatchCheck, run_preflight
from lightning_tricks.callbacks.overfit_batch_check import frozen_parameters
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLEAN = ["style/dict", "style/one_cycle_two_groups", "mlp/digits/seed1"]
BUGS = ["dropout_on_at_eval", "wrong_class_count", "augmentation_applied_to_labels", "zoo/labels_shifted"]


def test_the_benchmark_has_the_cases_the_issue_asks_for() -> None:
    clean, bugs = clean_cases(), bug_cases()
    assert len(clean) >= 20 and len(bugs) >= 12
    assert sum(name.count("/seed") for name in clean) == 21  # 7 shipped model x data pairs x 3 seeds
    assert {name for name in clean if name.startswith("style/")} >= {"style/dict", "style/fit_loaders"}
    assert all(set(checks) <= {"init_loss", "gradient_dependency", "overfit_batch", "input_independent_baseline",
                               "shuffle"} for _, checks in bugs.values())  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", CLEAN)
def test_a_clean_configuration_gets_no_fail(name: str) -> None:
    pl.seed_everything(0, verbose=False)
    report = clean_cases()[name]().preflight()
    assert report.passed, report.to_markdown()


@pytest.mark.slow
@pytest.mark.parametrize("name", BUGS)
def test_a_planted_bug_is_caught_by_its_check(name: str) -> None:
    build, expected = bug_cases()[name]
    pl.seed_everything(0, verbose=False)
    report = build().preflight()
    assert any(report[check].failed for check in expected), report.to_markdown()


# --- the checks' new findings, both ways -----------------------------------------------------------------


def mlp(num_outputs: int = 10, cls: type[MLP] = MLP, **kwargs) -> MLP:
    torch.manual_seed(0)
    return cls(input_shape=(1, 8, 8), num_outputs=num_outputs, **kwargs)


def test_labels_past_the_output_layer_fail_as_the_wrong_class_count_before_any_loss() -> None:
    pl.seed_everything(0, verbose=False)
    result = run_preflight(mlp(num_outputs=5), DigitsDataModule(seed=0), checks=[InitLossCheck()]).results[0]
    # Not "the check crashed: IndexError": digits' labels 0..9 need 10 outputs, the layer has 5.
    assert result.failed and result.message.startswith("labels go up to 9 (10+ classes)")
    assert "'net.5' has 5 outputs: the wrong class count" in result.message
    assert (result.measured, result.expected, result.details["largest_label"]) == (10.0, 5.0, 9)
    pl.seed_everything(0, verbose=False)
    right = run_preflight(mlp(num_outputs=10), DigitsDataModule(seed=0), checks=[InitLossCheck()]).results[0]
    assert right.passed and right.expected == pytest.approx(math.log(10), rel=0.01)
    assert "largest_label" not in right.details


def test_dropout_left_on_at_evaluation_fails_the_probe_and_dropout_used_right_passes() -> None:
    data = DigitsDataModule(seed=0)
    pl.seed_everything(0, verbose=False)
    bug = run_preflight(mlp(cls=DropoutAtEval), data, checks=[GradientDependencyProbe()]).results[0]
    assert bug.failed and "randomness is active at evaluation" in bug.message
    assert (
        bug.details["mixed_inputs"] == 0 and bug.details["changed_at_eval"] > 0.9
    )  # p=0.5 on 64 units moves ~every logit
    pl.seed_everything(0, verbose=False)
    clean = run_preflight(mlp(dropout=0.5), data, checks=[GradientDependencyProbe()]).results[0]  # nn.Dropout
    assert clean.passed and clean.details["changed_at_eval"] == 0.0


def test_a_time_major_view_mixes_samples_and_the_transpose_does_not() -> None:
    x = torch.randn(6, 1, 40)
    bug, right = TimeMajorView(bug=True), TimeMajorView(bug=False)
    right.load_state_dict(bug.state_dict())
    # The right model sees sample i only in output i: its outputs for a batch are those of each sample alone.
    alone = torch.cat([right(x[i : i + 1]) for i in range(6)])
    assert torch.allclose(right(x), alone, atol=1e-6) and not torch.allclose(bug(x), alone, atol=1e-3)


def test_frozen_parameters_are_counted_by_size() -> None:
    model = mlp()  # 64 -> 128 -> 64 -> 10
    assert frozen_parameters(model) == (0.0, [])
    model.net[:-1].requires_grad_(False)
    backbone, head = 64 * 128 + 128 + 128 * 64 + 64, 64 * 10 + 10
    fraction, names = frozen_parameters(model)
    assert fraction == pytest.approx(backbone / (backbone + head))
    assert names == ["net.1.weight", "net.1.bias", "net.3.weight", "... 1 more"]


@pytest.mark.slow
def test_a_frozen_backbone_is_named_before_the_learning_rate() -> None:
    build, _ = bug_cases()["frozen_random_backbone"]
    case = build()
    pl.seed_everything(0, verbose=False)
    result = run_preflight(case.model, case.datamodule, checks=[OverfitBatchCheck()]).results[0]
    assert result.failed and result.details["frozen_fraction"] == pytest.approx(1680 / 2010)  # convs + norms vs head
    assert (
        result.message.startswith("84%")
        and "of the parameters are frozen (requires_grad=False: net.0.weight" in result.message
    )
    pl.seed_everything(0, verbose=False)  # the same check on a model that learns: nothing frozen, nothing said
    clean = run_preflight(mlp(), DigitsDataModule(seed=0), checks=[OverfitBatchCheck()]).results[0]
    assert clean.passed and clean.details["frozen_fraction"] == 0.0 and "frozen" not in clean.message
