"""Training-time overhead of the default recipe's monitoring callbacks (target <= 1.05).

FullDatasetLoss, PredictionDynamics and VisualizeBatch at their default intervals, on the digits MLP
and CNN, alternated and repeated in one run. Two ratios: the steady-state epoch time (median over
epochs 2..N, each epoch from its start to the next one's, so validation and every epoch-end hook
count) — the target's measure — and the whole fit, which also carries the one-time costs (the first
batch's picture, the final dynamics plot). Lightning's own validation loop runs in both runs.
Usage: python benchmarks/bench_monitoring.py [--repeats 5] [--epochs 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from functools import partial

import lightning.pytorch as pl

from lightning_tricks import FullDatasetLoss, PredictionDynamics, VisualizeBatch
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import CNN, MLP


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())


def fit_seconds(model_cls, data, monitored: bool, epochs: int) -> tuple[float, float]:
    """(median steady-state epoch seconds, whole fit seconds)."""
    pl.seed_everything(0, verbose=False)
    model = model_cls(input_shape=data.input_shape, num_outputs=10)
    timer = EpochTimer()
    callbacks = [FullDatasetLoss(), PredictionDynamics(), VisualizeBatch()] if monitored else []
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[*callbacks, timer], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    total = time.perf_counter() - start
    durations = [b - a for a, b in zip(timer.marks, timer.marks[1:], strict=False)]
    # steady state: not the first epoch (warm-up, the first-batch picture) nor the last (the final plot)
    return statistics.median(durations[1:-1]), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = DigitsDataModule(seed=0)
    data.setup()
    # batch_norm=False: the CNN as measured for the README, before it had BatchNorm
    for model_cls in (MLP, partial(CNN, batch_norm=False)):
        fit_seconds(model_cls, data, True, 3)  # warm-up (imports, matplotlib)
        plain, monitored = [], []
        for _ in range(args.repeats):
            plain.append(fit_seconds(model_cls, data, False, args.epochs))
            monitored.append(fit_seconds(model_cls, data, True, args.epochs))
        (ea, ta), (eb, tb) = ([statistics.median(x) for x in zip(*runs, strict=True)] for runs in (plain, monitored))
        name = getattr(model_cls, "__name__", None) or model_cls.func.__name__  # a partial has no __name__
        print(f"digits {name}: epoch bare {ea * 1e3:.1f} ms, monitored {eb * 1e3:.1f} ms; "
              f"ratio {eb / ea:.3f} (target <= 1.05)")  # fmt: skip
        print(f"  whole {args.epochs}-epoch fit: bare {ta:.3f} s, monitored {tb:.3f} s; ratio {tb / ta:.3f}")


if __name__ == "__main__":
    main()
