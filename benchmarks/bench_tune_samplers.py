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

Part 2, ``--pruners``: the pruner at equal compute (issue 17: the old default, a median pruner judging
from the second validation after 5 start-up trials, pruned 15 of 20 trials, 13 after epoch 2, among
them the trial with the best epoch-1 loss). The shipped search space (``hparams_search=digits``: lr,
weight decay, batch size, dropout; AdamW), random sampler, the default metric ``val/loss``, digits MLP,
``--epochs`` epochs per trial. ``tune`` records a pool of ``--pool`` trials with a pruner that reports
every validation and prunes nothing; each pruner is then replayed on that pool (``replay``) in
``--repeats`` random orders: a pruned trial would have reported the first values of its recorded
curve, since training is seeded, so the replay is the study ``tune`` would run, trial for trial, at
no training cost. The budget is counted in epochs trained: ``--trials`` full trials; with pruning,
trials start until they have trained as many epochs (a pruned trial costs the epochs it ran).
Printed per pruner: best ``val/loss`` found (median [min - max] over the orders), in how many orders it
beat no pruning (and ties), epochs spent, trials started (pruned).

Usage: python benchmarks/bench_tune_samplers.py [--data digits mnist1d] [--repeats 5] [--trials 16]
       [--epochs 3] [--samplers grid grid_mid random qmc tpe]
       python benchmarks/bench_tune_samplers.py --pruners [--pool 18] [--epochs 6] [--trials 5] [--repeats 20]
           [--curves curves.json] [--pruner-names ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import random
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


def quiet_trials(data: str, epochs: int, seed: int) -> list[str]:
    """The train overrides every benchmarked study shares: the MLP on ``data``, no recipe, no logger, no test."""
    return [
        f"data={data}",
        "model=mlp",
        "recipe=none",
        "logger=none",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "test=false",
        f"seed={seed}",
    ]


def study_config(data: str, sampler: str, seed: int, trials: int, epochs: int, out: Path):
    overrides = [
        *quiet_trials(data, epochs, seed),
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


# name -> (tune.pruner, tune.n_startup_trials, tune.n_warmup_steps); "{half}": half the epochs.
# "median, warm-up 1" is what conf/tune.yaml shipped before issue 17.
PRUNERS = {
    "none": ("none", 0, 0),
    "median, warm-up 1 (old default)": ("median", 5, 1),
    "median, warm-up half": ("median", 5, "{half}"),
    "successive_halving, min 1": ("successive_halving", 0, 1),
    "hyperband, min 1": ("hyperband", 0, 1),
    "hyperband, min 2": ("hyperband", 0, 2),
}


def record_curves(trials: int, epochs: int, seed: int, root: Path) -> list[tuple[list[float], float]]:
    """Run ``tune`` with a pruner that reports every validation and never prunes: each trial's curve and value."""
    overrides = [
        *quiet_trials("digits", epochs, seed),
        "tune.sampler=random",
        f"tune.seed={seed}",
        "tune.storage=null",
        f"tune.n_trials={trials}",
        "tune.pruner=median",
        f"tune.n_startup_trials={10**6}",  # reports every validation to the study, prunes nothing
        f"tune.study_name=bench-pruner-pool-{seed}",
        f"paths.output_dir={root / f'pool-{seed}'}",
    ]
    with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
        cfg = compose("tune", overrides=overrides)
    with contextlib.redirect_stdout(io.StringIO()):
        study = tune_module.tune(cfg, overrides=[o for o in overrides if not o.startswith(("tune.", "paths."))])
    curves = []
    for t in study.trials:
        if t.state == TrialState.COMPLETE and len(t.intermediate_values) == epochs:
            curves.append(([t.intermediate_values[step] for step in range(epochs)], t.value))
    return curves


def replay(name: str, curves: list[tuple[list[float], float]], order: list[int], budget: int, epochs: int) -> dict:
    """Run the study ``tune`` would run with pruner ``name``, the trials' curves replayed in ``order``.

    Exact for sequential in-process trials: training is seeded, so a trial pruned after k validations
    would have reported the first k values of its recorded curve. The pruner is the one ``tune`` builds
    (``make_pruner``); trials start until they have trained ``budget`` epochs (or the pool runs out).
    """
    kind, startup, warmup = PRUNERS[name]
    warmup = int(str(warmup).format(half=epochs // 2))
    study = optuna.create_study(
        direction="minimize",
        pruner=study_module.make_pruner(kind, startup, warmup, epochs),
        study_name=f"replay-{name}",
    )
    spent, pruned, best = 0, 0, math.inf
    for index in order:
        if spent >= budget:
            break
        curve, value = curves[index]
        trial = study.ask()
        for step, loss in enumerate(curve):
            trial.report(loss, step)
            if kind != "none" and trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                spent, pruned = spent + step + 1, pruned + 1
                break
        else:
            study.tell(trial, value)
            spent, best = spent + epochs, min(best, value)
    return {"best": best, "spent": spent, "started": len(study.trials), "pruned": pruned}


def pruners(args: argparse.Namespace) -> None:
    budget = args.trials * args.epochs
    print(
        f"# pruners at equal compute: best val/loss within {args.trials} x {args.epochs} = {budget} epochs; digits "
        f"MLP, hparams_search=digits, random sampler; a pool of {args.pool} trials recorded by `tune`, replayed in "
        f"{args.repeats} random orders\n",
        flush=True,
    )
    if args.curves is not None and Path(args.curves).exists():
        curves = [(c, v) for c, v in json.loads(Path(args.curves).read_text())]
        print(f"read {len(curves)} curves from {args.curves}", flush=True)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-pruners-") as tmp:
            start = time.perf_counter()
            curves = record_curves(args.pool, args.epochs, 0, Path(tmp))
            print(f"recorded {len(curves)} complete curves in {time.perf_counter() - start:.0f} s", flush=True)
        if args.curves is not None:
            Path(args.curves).write_text(json.dumps(curves))
    finals = sorted(value for _, value in curves)
    print(f"pool: final val/loss best {finals[0]:.4f}, median {statistics.median(finals):.4f}\n")
    names = ["none", *(n for n in args.pruner_names if n != "none")]
    results: dict[str, list[dict]] = {name: [] for name in names}
    for seed in range(args.repeats):
        order = random.Random(seed).sample(range(len(curves)), len(curves))
        for name in names:
            results[name].append(replay(name, curves, order, budget, args.epochs))
    print(
        "| pruner | best val/loss mean | median [min - max] | vs none: better / same / worse | epochs spent "
        "| trials (pruned) |"
    )
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        pairs = list(zip(runs, results["none"], strict=True))
        wins = sum(r["best"] < n["best"] for r, n in pairs)
        ties = sum(r["best"] == n["best"] for r, n in pairs)
        started = statistics.mean(r["started"] for r in runs)
        pruned = statistics.mean(r["pruned"] for r in runs)
        versus = "-" if name == "none" else f"{wins} / {ties} / {len(runs) - wins - ties}"
        print(
            f"| {name} | {statistics.mean(r['best'] for r in runs):.4f} | {spread([r['best'] for r in runs], 4)} "
            f"| {versus} | {statistics.mean(r['spent'] for r in runs):.1f} | {started:.1f} ({pruned:.1f}) |"
        )


def quiet() -> None:
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning_fabric", "lightning_tricks", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("WANDB_MODE", "disabled")


def spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f} - {max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", nargs="+", default=["digits", "mnist1d"], choices=["digits", "mnist1d"])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=None, help="default 16; with --pruners 10 (the budget)")
    parser.add_argument("--epochs", type=int, default=None, help="default 3; with --pruners 8")
    parser.add_argument("--pruners", action="store_true", help="compare pruners at equal compute (part 2)")
    parser.add_argument("--pruner-names", nargs="+", default=list(PRUNERS), choices=list(PRUNERS))
    parser.add_argument("--curves", default=None, help="--pruners: JSON file to keep the recorded curves in (reused)")
    parser.add_argument("--pool", type=int, default=18, help="--pruners: trials recorded, replayed in random orders")
    args = parser.parse_args()
    quiet()
    if args.pruners:
        args.trials, args.epochs = args.trials or 5, args.epochs or 6
        pruners(args)
        return
    args.trials, args.epochs = args.trials or 16, args.epochs or 3
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
