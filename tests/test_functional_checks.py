"""The math of the checks against closed forms: expected init losses, dependency probing, causality."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_tricks.functional.gradient_dependency import batch_dependency, causal_violations
from lightning_tricks.functional.init_loss import expected_init_loss, likely_cause


def test_multiclass_zero_bias_is_ln_c_and_prior_bias_is_the_prior_entropy() -> None:
    y = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    assert expected_init_loss("multiclass", y, num_outputs=5) == pytest.approx(math.log(5))
    p = torch.tensor([0.7, 0.2, 0.1])
    entropy = -(p * p.log()).sum().item()
    assert expected_init_loss("multiclass", y, bias=p.log()) == pytest.approx(entropy)


def test_binary_zero_bias_is_ln2_and_logit_bias_is_the_binary_entropy() -> None:
    y = torch.tensor([1.0] * 10 + [0.0] * 100)
    assert expected_init_loss("binary", y) == pytest.approx(math.log(2))
    p = 10 / 110
    assert expected_init_loss("binary", y, bias=torch.tensor([math.log(p / (1 - p))])) == pytest.approx(
        -(p * math.log(p) + (1 - p) * math.log(1 - p))
    )
    multilabel = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    assert expected_init_loss("multilabel", multilabel) == pytest.approx(math.log(2))


def test_regression_zero_bias_is_the_mean_square_and_mean_bias_the_variance() -> None:
    y = torch.tensor([[48.0], [50.0], [52.0], [50.0]])
    assert expected_init_loss("regression", y) == pytest.approx((48**2 + 2 * 50**2 + 52**2) / 4)
    assert expected_init_loss("regression", y, bias=torch.tensor([50.0])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="`task` must be one of"):
        expected_init_loss("ranking", y)


def test_likely_cause_points_at_the_usual_suspects() -> None:
    assert "NaN" in likely_cause("multiclass", float("nan"), 2.3)
    assert "too large" in likely_cause("multiclass", 20.0, 2.3)
    assert "leak" in likely_cause("multiclass", 0.1, 2.3)


def _leaf(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)


def test_independent_samples_are_clean_at_two_backward_passes() -> None:
    for batch in (4, 64, 256):
        x = _leaf(batch, 10)
        layer = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
        report = batch_dependency(layer(x), x)
        assert report.mixed_inputs == [] and report.pairs == [] and report.backward_passes == 2


def test_a_batch_flip_is_found_with_its_exact_pairs() -> None:
    x = _leaf(8, 5)
    report = batch_dependency(x.flip(0) * 2.0 + x, x, max_explained=8)
    assert report.mixed_inputs == list(range(8))
    assert sorted(report.pairs) == [(i, 7 - i) for i in range(8)]


def test_a_view_instead_of_transpose_mixes_samples() -> None:
    x = _leaf(6, 4)
    mixed = x.view(4, 6).t()  # the bug: should be x itself (or x.t().t())
    report = batch_dependency(mixed, x)
    assert len(report.mixed_inputs) == 6
    assert batch_dependency(x.t().contiguous().t() * 3, x).mixed_inputs == []


def test_one_leaking_sample_is_the_only_one_reported() -> None:
    x = _leaf(5, 3)
    out = x.clone()
    out = out + torch.nn.functional.pad(x[3:4] * 0.5, (0, 0, 1, 3))  # output 1 reads input 3
    report = batch_dependency(out, x)
    assert report.mixed_inputs == [3] and report.pairs == [(1, 3)]


def test_causal_violations_name_the_future_positions() -> None:
    x = _leaf(2, 6, 4)
    causal = torch.cumsum(x, dim=1)  # position t sees inputs <= t only
    assert causal_violations(causal, x, positions=[0, 3]) == []
    leaky = causal + torch.roll(x, -1, dims=1)  # position t also sees t + 1
    assert causal_violations(leaky, x, positions=[0, 3]) == [(0, 1), (3, 4)]
