"""Random search against grid search (and Sobol, TPE) with the same trial budget, when few keys matter.

The recipe's claim (5, after Bergstra & Bengio 2012): with a fixed number of trials, random search
beats grid search when only some of the searched keys matter, because a grid spends its budget
repeating the same few values of the keys that matter while it varies the ones that do not.

Setup. ``lightning-tricks tune`` itself (in this process, ``tune(cfg)``; in-memory storage, no
pruning so every trial trains the same number of epochs) on the digits MLP and/or the MNIST-1D MLP
(``--data``), ``recipe=none``, ``logger=none``, ``--epochs`` epochs, AdamW (fixed). Four searched keys:

* ``model.optimizer.lr``: log-uniform 1e-4 .. 1 (matters);
* ``model.weight_decay``: log-uniform 1e-6 .. 1, decoupled decay on the weights (matters at the
  high end: with lr ~1e-2 a decay of ~1 shrinks the weights by ~1 % a step);
* ``+bench.unused_a``, ``+bench.unused_b``: uniform 0 .. 1, keys added to the train config that no
  code reads, so they cannot affect training (the "unimportant" dimensions).

Budget ``--trials`` (default 16 = the 2x2x2x2 grid, ``tune.grid_points=2``: each key's end points,
so the grid tries only 4 distinct (lr, weight decay) pairs, each 4 times). Samplers: grid; grid_mid
(the same 2x2x2x2 grid at the centres of each key's two half-ranges, e.g. lr 1e-3 and 1e-1: the
fair grid, since end points are the worst place for a 2-point grid); random; qmc (scrambled Sobol);
tpe. ``--repeats`` repeats, repeat *r* setting both the sampler seed (``tune.seed``) and the
training ``seed`` to *r*. Metric: the best ``val/acc`` of the study (``tune.metric=val/acc``,
``tune.direction=maximize``), median and [min - max] over repeats; also the number of distinct
(lr, weight decay) pairs tried.

Overhead, measured in the same runs: the time of each trial's ``TrialObjective`` call and the time
inside its ``train()`` call; "objective" = (objective - train) per trial, "study" = (study wall time
without the report - sum of train times) / trials, both also as a percentage of the mean train time
per trial; the report (``write_report``: trials.csv, best.json, plots, table) once per study, apart.

Baseline: grid search, the sampler the claim is against.

Usage: python benchmarks/bench_tune_samplers.py [--data digits mnist1d] [--repeats 5] [--trials 16]
       [--epochs 3] [--samplers grid grid_mid random qmc tpe]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from optuna.trial import TrialState

import lightning_tricks.commands.tune as tune_module
import lightning_tricks.tuning.study as study_module

PARAMS = {
    "model.optimizer.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "model.weight_decay": {"type": "float", "low": 1e-6, "high": 1.0, "log": True},
    "+bench.unused_a": {"type": "float", "low": 0.0, "high": 1.0},
    "+bench.unused_b": {"type": "float", "low": 0.0, "high": 1.0},
}
FIXED = {"model.optimizer._target_": "torch.optim.AdamW"}
# grid_mid: the same 2-point grid sampler, at the centres of the 2 cells of each key's range (in log space
# for the log keys) instead of its end points; the fairer grid.
GRID_MID = {
    "model.optimizer.lr": [1e-3, 1e-1],
    "model.weight_decay": [10**-4.5, 10**-1.5],
    "+bench.unused_a": [0.25, 0.75],
    "+bench.unused_b": [0.25, 0.75],
}
SAMPLERS = ("grid", "grid_mid", "random", "qmc", "tpe")


class Clock:
    """Sums of the time spent in train(), in TrialObjective.__call__ and in write_report."""

    def __init__(self) -> None:
        self.train = self.objective = self.report = 0.0
        self.trials = 0

    @contextlib.contextmanager
    def installed(self):
        train, call, report = tune_module.train, study_module.TrialObjective.__call__, tune_module.write_report

        def timed_train(cfg):
            start = time.perf_counter()
            try:
                return train(cfg)
            finally:
                self.train += time.perf_counter() - start

        def timed_call(objective, trial):
            start = time.perf_counter()
            try:
                return call(objective, trial)
            finally:
                self.objective += time.perf_counter() - start
                self.trials += 1

        def timed_report(*args, **kwargs):
            start = time.perf_counter()
            try:
                return report(*args, **kwargs)
            finally:
                self.report += time.perf_counter() - start

        tune_module.train = timed_train  # what the tune command gives TrialObjective as `train=`
        study_module.TrialObjective.__call__ = timed_call
        tune_module.write_report = timed_report
        try:
            yield self
        finally:
            tune_module.train = train
            study_module.TrialObjective.__call__ = call
            tune_module.write_report = report


def study_config(data: str, sampler: str, seed: int, trials: int, epochs: int, out: Path):
    overrides = [
        f"data={data}",
        "model=mlp",
        "recipe=none",
        "logger=none",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "test=false",
        f"seed={seed}",
        f"tune.sampler={'grid' if sampler == 'grid_mid' else sampler}",
        f"tune.seed={seed}",
        "tune.pruner=none",
        "tune.metric=val/acc",
        "tune.direction=maximize",
        "tune.storage=null",
        f"tune.n_trials={trials}",
        "tune.grid_points=2",
        f"tune.study_name=bench-{data}-{sampler}-{seed}",
        f"paths.output_dir={out}",
    ]
    with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
        cfg = compose("tune", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    if sampler == "grid_mid":
        cfg.hparams_search.params = {k: {**v, "grid": GRID_MID[k]} for k, v in PARAMS.items()}
    else:
        cfg.hparams_search.params = PARAMS
    cfg.hparams_search.fixed = FIXED
    OmegaConf.set_struct(cfg, True)
    return cfg, [o for o in overrides if not o.startswith(("tune.", "paths."))]


def run_study(data: str, sampler: str, seed: int, trials: int, epochs: int, root: Path) -> dict:
    out = root / f"{data}-{sampler}-{seed}"
    cfg, overrides = study_config(data, sampler, seed, trials, epochs, out)
    clock = Clock()
    with clock.installed(), contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        study = tune_module.tune(cfg, overrides=overrides)
        wall = time.perf_counter() - start
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pairs = {(round(t.params["model.optimizer.lr"], 12), round(t.params["model.weight_decay"], 12)) for t in complete}
    return {
        "best": max(t.value for t in complete) if complete else float("nan"),
        "complete": len(complete),
        "pairs": len(pairs),
        "train": clock.train / max(clock.trials, 1),
        "objective_overhead": (clock.objective - clock.train) / max(clock.trials, 1),
        "study_overhead": (wall - clock.report - clock.train) / max(clock.trials, 1),
        "report": clock.report,
        "wall": wall,
    }


def quiet() -> None:
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning_fabric", "lightning_tricks", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("WANDB_MODE", "disabled")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f} - {max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", nargs="+", default=["digits", "mnist1d"], choices=["digits", "mnist1d"])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    quiet()
    print(
        f"# tune samplers: best val/acc in {args.trials} trials, {args.epochs} epochs each, "
        f"{args.repeats} repeats (seeds 0..{args.repeats - 1}); 2 of 4 searched keys matter\n",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        for data in args.data:
            for sampler in args.samplers:
                runs = []
                for seed in range(args.repeats):
                    runs.append(run_study(data, sampler, seed, args.trials, args.epochs, Path(tmp)))
                    r = runs[-1]
                    print(
                        f"  {data} {sampler} seed {seed}: best {r['best']:.4f}, {r['complete']} complete, "
                        f"{r['pairs']} (lr, wd) pairs, {r['wall']:.1f} s",
                        flush=True,
                    )
                rows.append((data, sampler, runs))
    print()
    print(
        "| data | sampler | best val/acc median [min - max] | distinct (lr, wd) | train s/trial "
        "| objective overhead ms/trial | study overhead ms/trial | report s/study |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for data, sampler, runs in rows:
        train = statistics.mean(r["train"] for r in runs)
        objective = statistics.mean(r["objective_overhead"] for r in runs)
        study = statistics.mean(r["study_overhead"] for r in runs)
        pairs = statistics.median(r["pairs"] for r in runs)
        print(
            f"| {data} | {sampler} | {spread([r['best'] for r in runs])} | {pairs:g} | {train:.2f} "
            f"| {objective * 1e3:.0f} ({objective / train:.1%}) | {study * 1e3:.0f} ({study / train:.1%}) "
            f"| {statistics.mean(r['report'] for r in runs):.2f} |"
        )


if __name__ == "__main__":
    main()
