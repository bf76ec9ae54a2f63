"""The tune pruners (issue 17 item 7): each ``tune.pruner`` builds the Optuna pruner its settings name.

Which one is the default, and why, is measured in ``benchmarks/bench_tune_samplers.py --pruners``.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState
from test_tune import by_state, compose_tune

from lightning_tricks.commands.tune import tune
from lightning_tricks.tuning.study import PRUNERS, check_tune_settings, make_pruner, pruner_config, warmup_steps
from lightning_tricks.utilities.arguments import UsageError


def test_each_pruner_is_built_with_the_warm_up_and_the_run_length() -> None:
    median = make_pruner("median", 5, 3, 8)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (5, 3)
    halving = make_pruner("successive_halving", 5, 2, 8)
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner) and halving._min_resource == 2
    hyperband = make_pruner("hyperband", 5, 2, 8)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource, hyperband._reduction_factor) == (2, 8, 3)
    # No warm-up still waits for one validation (a rung at 0 validations means nothing); no length: "auto".
    assert (
        pruner_config("hyperband", 0, 0)["min_resource"] == 1
        and pruner_config("hyperband", 0, 0)["max_resource"] == "auto"
    )
    assert isinstance(make_pruner("none", 5, 1), optuna.pruners.NopPruner)
    assert set(PRUNERS) == {"none", "median", "successive_halving", "hyperband"}


def test_the_default_is_the_pruner_the_benchmark_chose(tmp_path: Path) -> None:
    cfg = compose_tune(tmp_path)
    # The median pruner after 5 trials, from half the epochs on (null): 10 validations of the default 20.
    assert (cfg.tune.pruner, cfg.tune.n_startup_trials, cfg.tune.n_warmup_steps) == ("median", 5, None)
    assert warmup_steps(cfg.tune.n_warmup_steps, 20) == 10
    assert warmup_steps(cfg.tune.n_warmup_steps, cfg.trainer.max_epochs) == cfg.trainer.max_epochs // 2
    check_tune_settings(cfg.tune)  # null is allowed
    OmegaConf.set_struct(cfg, False)
    cfg.tune.n_warmup_steps = -1
    with pytest.raises(UsageError, match=r"`tune.n_warmup_steps` must be an integer >= 0 or null"):
        check_tune_settings(cfg.tune)


@pytest.mark.slow
def test_hyperband_stops_only_hopeless_trials(tmp_path: Path) -> None:
    epochs = 4
    params = {"model.optimizer.lr": {"type": "categorical", "choices": [1e-2, 1e-9]}}
    cfg = compose_tune(
        tmp_path, f"trainer.max_epochs={epochs}", "tune.n_trials=8", "tune.pruner=hyperband", params=params
    )
    study = tune(cfg, overrides=[])
    pruned, complete = by_state(study, TrialState.PRUNED), by_state(study, TrialState.COMPLETE)
    assert len(pruned) + len(complete) == 8 and pruned and complete
    assert all(t.params["model.optimizer.lr"] == 1e-9 for t in pruned)
    assert all(len(t.intermediate_values) < epochs for t in pruned)
    assert all(len(t.intermediate_values) == epochs for t in complete)
