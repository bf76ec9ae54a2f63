"""Caffe's LR policies (and cyclical LR) on the digits CNN: final validation accuracy and loss, and fit time.

The recipe says step/multistep converge best, exp/poly next, inv and fixed worst. This runs each
policy on the same model, data, seeds and optimizer (SGD, momentum 0.9, as Caffe used) for a fixed
number of epochs through ``ReferenceModule`` (the scheduler steps every batch), validates once at
the end, and prints accuracy and loss (mean and spread over seeds) and the fit's wall and CPU time
relative to ``fixed``, the baseline, measured in the same process after one discarded warm-up fit.
On a shared machine those ratios are mostly noise, so the scheduler's own cost is also timed
alone: ``scheduler.step()`` on the CNN's optimizer, in microseconds per call.

Policy arguments are set relative to the run's length T (in optimizer steps), after Caffe's example
solvers where there is one: ``inv`` as Caffe's LeNet solver (gamma * T = 1, power 0.75), ``poly`` as
its GoogLeNet quick solver (power 0.5), ``step``/``multistep`` with Caffe's gamma 0.1.

Usage: python benchmarks/bench_lr_policies.py [--epochs 10] [--seeds 1] [--base-lr 0.1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from functools import partial

import lightning.pytorch as pl
import torch

from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import CNN
from lightning_tricks.schedules import POLICIES


def policy_settings(total: int, base_lr: float) -> dict[str, tuple[float, dict]]:
    """Each policy's (optimizer lr, scheduler arguments) for a run of ``total`` optimizer steps."""
    return {
        "fixed": (base_lr, {}),
        "step": (base_lr, {"stepsize": -(-total // 3), "gamma": 0.1}),  # drops at T/3 and 2T/3
        "multistep": (base_lr, {"stepvalues": [total // 2, 3 * total // 4], "gamma": 0.1}),
        "exp": (base_lr, {"gamma": round(0.01 ** (1 / total), 6)}),  # 1% of base_lr at the end
        "poly": (base_lr, {"max_iter": total, "power": 0.5}),
        "inv": (base_lr, {"gamma": round(1 / total, 6), "power": 0.75}),  # 0.59 x base_lr at the end
        "sigmoid": (base_lr, {"gamma": round(-10 / total, 6), "stepsize": total // 2}),  # 0.99 -> 0.007
        # Smith: upper bound where the range test still improves, lower bound 1/4 of it; two full cycles.
        "cyclical": (base_lr / 4, {"max_lr": base_lr, "stepsize": max(1, total // 4)}),
    }


def fit(policy: str | None, lr: float, kwargs: dict, epochs: int, seed: int) -> dict[str, float]:
    pl.seed_everything(seed, verbose=False)
    datamodule = DigitsDataModule(batch_size=64, seed=seed)
    model = CNN(
        input_shape=(1, 8, 8),
        num_outputs=10,
        batch_norm=False,  # as measured for the README, before the CNN had BatchNorm
        optimizer=partial(torch.optim.SGD, lr=lr, momentum=0.9),
        scheduler=partial(POLICIES[policy], **kwargs) if policy else None,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        check_val_every_n_epoch=epochs,  # validate once, at the end: the same cost for every policy
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=datamodule)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    metrics = trainer.callback_metrics
    return {"acc": float(metrics["val/acc"]), "loss": float(metrics["val/loss"]), "seconds": seconds, "cpu": cpu}


def step_cost_us(policy: str, lr: float, kwargs: dict, total: int) -> float:
    """Microseconds per ``scheduler.step()`` on the CNN's optimizer, over a whole run's ``total`` steps."""
    optimizer = torch.optim.SGD(CNN(input_shape=(1, 8, 8), num_outputs=10).parameters(), lr=lr, momentum=0.9)
    scheduler = POLICIES[policy](optimizer, **kwargs)
    optimizer.step()  # no gradients: a no-op, but torch wants an optimizer step before the first scheduler step
    start = time.perf_counter()
    for _ in range(total):
        scheduler.step()
    return (time.perf_counter() - start) / total * 1e6


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1, help="runs per policy, seeds 0..N-1")
    parser.add_argument("--base-lr", type=float, default=0.1, help="SGD's lr (cyclical: the upper bound)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: less sensitive to other load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")

    datamodule = DigitsDataModule(batch_size=64, seed=0)
    datamodule.setup()
    steps_per_epoch = len(datamodule.train_dataloader())
    total = steps_per_epoch * args.epochs
    settings = policy_settings(total, args.base_lr)
    print(
        f"digits CNN (channels 16, 32), SGD momentum 0.9, batch 64, {args.epochs} epochs x {steps_per_epoch} steps "
        f"= T = {total} steps, scheduler stepped per batch; seeds 0..{args.seeds - 1}; torch threads "
        f"{torch.get_num_threads()}"
    )
    fit(None, args.base_lr, {}, 1, 0)  # warm-up: first-fit costs (lazy imports, allocator) are nobody's

    results: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for seed in range(args.seeds):
        for name, (lr, kwargs) in settings.items():  # every policy in the same seed before the next seed
            results[name].append(fit(name, lr, kwargs, args.epochs, seed))

    wall = statistics.fmean(r["seconds"] for r in results["fixed"])
    cpu = statistics.fmean(r["cpu"] for r in results["fixed"])
    header = f"{'policy':10s} | {'val acc':>15s} | {'val loss':>15s} | wall / fixed | CPU / fixed | step() µs"
    print(f"\n{header} | lr, arguments")
    print("|".join("-" * len(column) for column in (header + " | lr, arguments").split("|")))
    for name, runs in results.items():
        lr, kwargs = settings[name]
        cost = step_cost_us(name, lr, kwargs, total)
        print(
            f"{name:10s} | {spread([r['acc'] for r in runs]):>15s} | {spread([r['loss'] for r in runs]):>15s} | "
            f"{statistics.fmean(r['seconds'] for r in runs) / wall:12.2f} | "
            f"{statistics.fmean(r['cpu'] for r in runs) / cpu:11.2f} | {cost:9.1f} | lr={lr:g} {kwargs}"
        )
    print(
        f"\nfixed: {wall:.2f} s wall, {cpu:.2f} s CPU per fit (mean over seeds), "
        f"{wall / total * 1e3:.1f} ms wall per training step (validation included)"
    )


if __name__ == "__main__":
    main()
