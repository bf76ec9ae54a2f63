"""Decay the LR, or grow the batch (Smith et al. 2018)? Both, same seeds, on the digits CNN.

(a) SGD (momentum 0.9) at batch B, the LR multiplied by gamma at the milestone epochs (torch MultiStepLR);
(b) the same SGD at a constant LR, the batch multiplied by 1/gamma at the same epochs (BatchSizeSchedule).
Same model init, data split and epochs. Prints, per arm: final validation and test accuracy (mean and
spread over seeds), optimizer steps and wall time of ``fit`` (validation only after the last epoch),
and the ratios (b)/(a) of steps and time, all measured in this run.

Usage: python benchmarks/bench_batch_size_schedule.py [--seeds 3] [--epochs 24] [--gamma 0.2] [--threads 1]
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

from lightning_tricks.callbacks.batch_size_schedule import BatchSizeSchedule
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import CNN


def run(arm: str, seed: int, args: argparse.Namespace) -> dict:
    pl.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(batch_size=args.batch_size, seed=0)  # one split for all runs; the seed varies the rest
    growth = round(1 / args.gamma)
    scheduler = (
        partial(torch.optim.lr_scheduler.MultiStepLR, milestones=args.milestones, gamma=args.gamma)
        if arm == "decay"
        else None
    )
    model = CNN(
        input_shape=dm.input_shape,
        num_outputs=10,
        batch_norm=False,  # as measured for the README, before the CNN had BatchNorm
        optimizer=partial(torch.optim.SGD, lr=args.lr, momentum=0.9),
        scheduler=scheduler,
    )
    callbacks = [BatchSizeSchedule(milestones=args.milestones, factor=growth)] if arm == "grow" else []
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        check_val_every_n_epoch=args.epochs,  # validate once, at the end: the timing is the training's
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    val = float(trainer.callback_metrics["val/acc"])
    (test,) = trainer.test(model, datamodule=dm, verbose=False)
    return {"val": val, "test": float(test["test/acc"]), "steps": trainer.global_step, "seconds": seconds}


def summary(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean = statistics.fmean(values) * scale
    spread = (statistics.stdev(values) * scale) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--milestones", type=int, nargs="+", default=None, help="default: 1/3 and 2/3 of the epochs")
    parser.add_argument("--gamma", type=float, default=0.2, help="LR decay of (a); (b) grows the batch by 1/gamma")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    args = parser.parse_args()
    args.milestones = args.milestones or [args.epochs // 3, 2 * args.epochs // 3]
    growth = round(1 / args.gamma)
    if abs(growth * args.gamma - 1) > 1e-9:
        parser.error(f"--gamma must be 1/k for an integer k (the batch grows by k), got {args.gamma}")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    results: dict[str, list[dict]] = {"decay": [], "grow": []}
    for seed in range(args.seeds):
        for arm in ("decay", "grow"):  # interleaved: a slow spell of a shared machine hits both arms
            results[arm].append(run(arm, seed, args))

    final = [args.batch_size * growth ** len(args.milestones)]
    print(
        f"digits CNN, SGD lr {args.lr} momentum 0.9, batch {args.batch_size}, {args.epochs} epochs, "
        f"milestones {args.milestones}, {args.seeds} seeds (mean ± std), {args.threads} torch thread(s)"
    )
    print(f"(a) decay LR x {args.gamma} at the milestones | (b) grow batch x {growth} (to {final[0]}), LR constant")
    print()
    print("| arm | val acc (%) | test acc (%) | optimizer steps | fit time (s) |")
    print("| --- | --- | --- | --- | --- |")
    for arm, label in (("decay", "(a) decay LR"), ("grow", "(b) grow batch")):
        rows = results[arm]
        print(
            f"| {label} | {summary([r['val'] for r in rows], 100)} | {summary([r['test'] for r in rows], 100)} | "
            f"{summary([r['steps'] for r in rows], digits=0)} | {summary([r['seconds'] for r in rows], digits=2)} |"
        )
    steps = statistics.fmean(r["steps"] for r in results["grow"]) / statistics.fmean(
        r["steps"] for r in results["decay"]
    )
    seconds = statistics.fmean(r["seconds"] for r in results["grow"]) / statistics.fmean(
        r["seconds"] for r in results["decay"]
    )
    print()
    print(f"ratio (b)/(a): optimizer steps {steps:.3f}, fit time {seconds:.3f}")


if __name__ == "__main__":
    main()
