"""Search spaces from YAML: parsing, checking, sampling distributions, grids, override strings (no Trainer)."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from hydra import compose, initialize_config_module
from scipy import stats

from lightning_tricks.functional.search_space import (
    SearchSpaceError,
    format_value,
    grid_size,
    grid_space,
    grid_values,
    parse_fixed,
    parse_param,
    parse_search_space,
    suggest,
    to_overrides,
    value_from_unit,
)
from lightning_tricks.tuning.study import PerTrialRandomSampler, train_overrides

LR = {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}


def sample(specs, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=PerTrialRandomSampler(seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial, specs))
        study.tell(trial, 0.0)
    return out


def test_log_float_stays_in_bounds_and_is_log_uniform() -> None:
    specs = parse_search_space({"model.optimizer.lr": LR})
    lrs = np.array([v["model.optimizer.lr"] for v in sample(specs, 2000)])
    assert lrs.min() >= 1e-5 and lrs.max() <= 1e-1
    # log10(lr) is uniform on [-5, -1]: each decade gets a quarter of the draws (a linear sampler would
    # put ~90% of them in the top decade, the template's mistake).
    result = stats.kstest(np.log10(lrs), stats.uniform(loc=-5, scale=4).cdf)
    assert result.pvalue > 0.01
    decades = np.histogram(np.log10(lrs), bins=[-5, -4, -3, -2, -1])[0] / len(lrs)
    assert np.allclose(decades, 0.25, atol=0.04)


def test_linear_float_int_and_categorical_samples() -> None:
    specs = parse_search_space(
        {
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "trainer.max_epochs": {"type": "int", "low": 2, "high": 6},
            "data.batch_size": {"type": "categorical", "choices": [32, 64, 128]},
            "model.hidden_sizes": {"type": "categorical", "choices": [[64], [128, 64]]},
        }
    )
    draws = sample(specs, 600)
    dropout = np.array([d["model.dropout"] for d in draws])
    assert 0 <= dropout.min() and dropout.max() <= 0.5 and abs(dropout.mean() - 0.25) < 0.03
    assert {d["trainer.max_epochs"] for d in draws} == {2, 3, 4, 5, 6}
    assert all(isinstance(d["trainer.max_epochs"], int) for d in draws)
    assert {d["data.batch_size"] for d in draws} == {32, 64, 128}
    # A list choice reaches the config as a list, not as the string Optuna stores.
    assert {tuple(d["model.hidden_sizes"]) for d in draws} == {(64,), (128, 64)}


def test_per_trial_seeding_same_values_for_a_trial_number_whoever_runs_it() -> None:
    specs = parse_search_space(
        {"model.optimizer.lr": LR, "data.batch_size": {"type": "categorical", "choices": [1, 2]}}
    )
    first, again = sample(specs, 5, seed=3), sample(specs, 5, seed=3)
    assert first == again  # a resumed study or a second worker draws trial n's values again
    assert len({d["model.optimizer.lr"] for d in first}) == 5  # and trials differ from each other
    assert sample(specs, 5, seed=4) != first


def test_value_from_unit_matches_closed_forms() -> None:
    lr = parse_param("lr", LR)
    assert math.isclose(value_from_unit(lr, 0.0), 1e-5) and math.isclose(value_from_unit(lr, 0.75), 1e-2)
    step = parse_param("x", {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25})
    assert [value_from_unit(step, u) for u in (0.0, 0.3, 0.99)] == [0.0, 0.25, 1.0]
    ints = parse_param("n", {"type": "int", "low": 1, "high": 4})
    assert [value_from_unit(ints, u) for u in (0.0, 0.26, 0.51, 0.99)] == [1, 2, 3, 4]


def test_grids() -> None:
    specs = parse_search_space(
        {
            "model.optimizer.lr": LR,
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "grid": [0.0, 0.25]},
            "data.batch_size": {"type": "categorical", "choices": [32, 64]},
        }
    )
    grid = grid_space(specs, n_grid=5)
    assert grid["model.optimizer.lr"] == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # log-spaced
    assert grid["model.dropout"] == [0.0, 0.25] and grid["data.batch_size"] == [32, 64]
    assert grid_size(grid) == 20
    assert grid_values(parse_param("x", {"type": "float", "low": 0, "high": 1}), 3) == [0.0, 0.5, 1.0]


def test_overrides_read_back_by_hydra_unchanged() -> None:
    specs = parse_search_space(
        {
            "model.optimizer.lr": LR,
            "model.hidden_sizes": {"type": "categorical", "choices": [[128, 64]]},
            "+model.optimizer.momentum": {"type": "float", "low": 0.5, "high": 0.9},
        }
    )
    fixed = parse_fixed({"model.optimizer._target_": "torch.optim.SGD"})
    values = {"model.optimizer.lr": 1.234e-05, "model.hidden_sizes": [128, 64], "model.optimizer.momentum": 0.9}
    overrides = to_overrides(fixed, {"model.optimizer._target_": "torch.optim.SGD"}) + to_overrides(specs, values)
    assert overrides == [
        "model.optimizer._target_=torch.optim.SGD",
        "model.optimizer.lr=1.234e-05",
        "model.hidden_sizes=[128,64]",
        "+model.optimizer.momentum=0.9",
    ]
    with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=/tmp/unused"])
    assert cfg.model.optimizer.lr == 1.234e-05 and list(cfg.model.hidden_sizes) == [128, 64]
    assert cfg.model.optimizer.momentum == 0.9 and cfg.model.optimizer._target_ == "torch.optim.SGD"
    assert format_value("it's") == "'it\\'s'" and format_value(float("inf")) == "inf"


def test_only_train_overrides_go_into_the_reproducing_command() -> None:
    given = ["data=mnist1d", "tune.n_trials=5", "hparams_search=mnist1d", "hydra.run.dir=x", "paths.output_dir=y"]
    given += ["+callbacks@callbacks.lr=learning_rate_monitor", "trainer.max_epochs=3"]
    assert train_overrides(given) == [
        "data=mnist1d",
        "+callbacks@callbacks.lr=learning_rate_monitor",
        "trainer.max_epochs=3",
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"model.optimizer.lr": {"type": "float", "low": 0.0, "high": 1e-1, "log": True}},
            "`model.optimizer.lr`: `log: true` needs `low` > 0",
        ),
        (
            {"model.dropout": {"type": "float", "low": 0.6, "high": 0.1}},
            "`model.dropout`: `low` (0.6) must not exceed `high` (0.1)",
        ),
        (
            {"model.dropout": {"type": "uniform", "low": 0, "high": 1}},
            "`model.dropout`: `type` must be one of ['float', 'int', 'categorical'], got 'uniform'",
        ),
        (
            {"data.batch_size": {"type": "categorical", "choices": []}},
            "`data.batch_size`: `choices` must be a non-empty list",
        ),
        (
            {"data.batch_size": {"type": "categorical", "choices": [32, 32]}},
            "`data.batch_size`: `choices` has duplicates",
        ),
        (
            {"data.batch_size": {"type": "int", "low": 8.5, "high": 64}},
            "`data.batch_size`: `low` must be an integer, got 8.5",
        ),
        ({"model.dropout": {"type": "float", "high": 0.5}}, "`model.dropout`: type float needs `low`"),
        (
            {"model.dropout": {"type": "float", "low": 0, "high": 1, "lgo": True}},
            "`model.dropout`: unknown field(s) ['lgo']",
        ),
        (
            {"model.dropout": {"type": "float", "low": 0, "high": 1, "grid": [0.5, 2]}},
            "`model.dropout`: `grid` values [2.0] lie outside",
        ),
        (
            {"model.dropout": {"type": "float", "low": 0, "high": "abc"}},
            "`model.dropout`: `high` must be a number, got 'abc'",
        ),
        (
            {"model.optimizer.lr": {"type": "float", "low": 1e-4, "high": 1, "log": True, "step": 0.1}},
            "`model.optimizer.lr`: `step` and `log: true`",
        ),
        ({"model.dropout": 0.5}, "`model.dropout`: expected a mapping"),
        (
            {"not a key": {"type": "float", "low": 0, "high": 1}},
            "search space key 'not a key' is not a dotted config key",
        ),
        ({}, "the search space is empty"),
    ],
)
def test_bad_specs_name_the_key_and_the_problem(params: dict, message: str) -> None:
    with pytest.raises(SearchSpaceError) as error:
        parse_search_space(params)
    assert message in str(error.value)
