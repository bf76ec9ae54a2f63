"""Early stopping: epochs saved against accuracy given up, and what restoring the best weights costs.

(a) Epochs saved. The digits CNN and the MNIST-1D CNN (Adam 3e-3) are trained for ``--epochs``
    epochs without stopping, and again with ``EarlyStopping(monitor="val/loss", patience=P,
    restore_best_weights=True)``; same seeds, same split. Per data set: epochs run, test accuracy
    (mean ± spread over seeds) of the full run's last weights and of the stopped run's restored best
    weights, and the fraction of epochs saved.
(b) Cost. The same digits fit (patience larger than the run, so both run every epoch) with
    Lightning's ``EarlyStopping`` and with ours (``restore_best_weights=True``: a CPU copy of the
    weights on each improvement); the ratio of fit times, measured alternately in this run.

Usage: python benchmarks/bench_early_stopping.py [--seeds 3] [--epochs 60] [--patience 5]
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
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

from lightning_tricks.callbacks.early_stopping import EarlyStopping
from lightning_tricks.data import DigitsDataModule, MNIST1DDataModule
from lightning_tricks.models import CNN

DATA = {"digits": partial(DigitsDataModule, seed=0), "mnist1d": partial(MNIST1DDataModule, seed=0)}


def fit(data: str, seed: int, epochs: int, callbacks: list) -> tuple[pl.Trainer, CNN, pl.LightningDataModule, float]:
    pl.seed_everything(seed, verbose=False)
    dm = DATA[data](batch_size=64)
    model = CNN(  # batch_norm=False: as measured for the README, before the CNN had BatchNorm
        dm.input_shape,
        dm.num_outputs,
        channels=(32, 64),
        batch_norm=False,
        optimizer=partial(torch.optim.Adam, lr=3e-3),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return trainer, model, dm, time.perf_counter() - start


def test_accuracy(trainer: pl.Trainer, model: CNN, dm: pl.LightningDataModule) -> float:
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    return float(result["test/acc"])


def summary(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * scale:.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--cost-repeats", type=int, default=3)
    parser.add_argument("--cost-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    print(f"(a) {args.epochs} epochs vs EarlyStopping(patience={args.patience}, restore_best_weights=True)")
    print("| data | epochs run (ES) | epochs saved | test acc, full run | test acc, ES (best weights) | Δ acc |")
    print("| --- | --- | --- | --- | --- | --- |")
    for data in DATA:
        full, stopped, ran = [], [], []
        for seed in range(args.seeds):
            trainer, model, dm, _ = fit(data, seed, args.epochs, [])
            full.append(test_accuracy(trainer, model, dm))
            es = EarlyStopping(monitor="val/loss", patience=args.patience, restore_best_weights=True)
            trainer, model, dm, _ = fit(data, seed, args.epochs, [es])
            stopped.append(test_accuracy(trainer, model, dm))
            ran.append(trainer.current_epoch if es.stopped_epoch == 0 else es.stopped_epoch + 1)
        saved = [1 - r / args.epochs for r in ran]
        delta = [s - f for s, f in zip(stopped, full, strict=True)]
        print(
            f"| {data} | {summary(ran, digits=1)} | {summary(saved, 100, 0)} % | {summary(full, 100)} % | "
            f"{summary(stopped, 100)} % | {summary(delta, 100)} pts |"
        )

    print(f"\n(b) cost: digits CNN, {args.cost_epochs} epochs, patience > epochs (never stops)")
    times: dict[str, list[float]] = {"lightning": [], "ours": []}
    for repeat in range(args.cost_repeats):
        for arm in ("lightning", "ours") if repeat % 2 == 0 else ("ours", "lightning"):
            callback = (
                LightningEarlyStopping(monitor="val/loss", patience=10**6)
                if arm == "lightning"
                else EarlyStopping(monitor="val/loss", patience=10**6, restore_best_weights=True)
            )
            times[arm].append(fit("digits", 0, args.cost_epochs, [callback])[3])
    ratio = statistics.median(times["ours"]) / statistics.median(times["lightning"])
    print(
        f"fit time: Lightning EarlyStopping {statistics.median(times['lightning']):.2f} s, ours with restore "
        f"{statistics.median(times['ours']):.2f} s (median of {args.cost_repeats}) -> ratio {ratio:.3f}"
    )


if __name__ == "__main__":
    main()
