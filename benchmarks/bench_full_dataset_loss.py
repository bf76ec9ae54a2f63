"""Cost of FullDatasetLoss against Lightning's own validation loop over the same data (target <= 1.1).

Two fits of the same model and data, alternated and repeated: one validates with Lightning's loop
(`val/loss` logged by the module), the other with `limit_val_batches=0` and FullDatasetLoss doing the
validation pass instead. Both read the validation set once per epoch; the ratio is the fit time with
FullDatasetLoss over the fit time with Lightning's loop. Usage: python benchmarks/bench_full_dataset_loss.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import lightning.pytorch as pl

from lightning_tricks import FullDatasetLoss
from lightning_tricks.data import DigitsDataModule, MNIST1DDataModule
from lightning_tricks.models import MLP


def fit_seconds(data, ours: bool, epochs: int) -> float:
    pl.seed_everything(0, verbose=False)
    model = MLP(input_shape=data.input_shape, num_outputs=10)
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_val_batches=0 if ours else 1.0,
        num_sanity_val_steps=0,
        callbacks=[FullDatasetLoss()] if ours else [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for name, data in (("digits", DigitsDataModule(seed=0)), ("mnist1d 20k", MNIST1DDataModule(num_samples=20000))):
        data.setup()
        fit_seconds(data, False, 1)  # warm-up
        lightning, ours = [], []
        for _ in range(args.repeats):
            lightning.append(fit_seconds(data, False, args.epochs))
            ours.append(fit_seconds(data, True, args.epochs))
        a, b = statistics.median(lightning), statistics.median(ours)
        print(f"{name}: fit with Lightning's val loop {a:.3f} s, with FullDatasetLoss instead {b:.3f} s")
        print(f"  ratio FullDatasetLoss / Lightning val loop: {b / a:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
