"""Cost of DataInspection: the loss ranking at fit end, and the data report at fit start, against a bare fit.

Three fits of the same model and data, alternated and repeated: a bare ``Trainer``; with
``DataInspection(at_fit_start=False)`` (every train and val sample scored once after training, top-k
table, picture grid and full CSV written); and with the fit-start report as well. Prints each as a
ratio over the bare fit. Usage: python benchmarks/bench_data_inspection.py [--repeats 3 --epochs 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

from lightning_tricks.callbacks.data_inspection import DataInspection
from lightning_tricks.data import DigitsDataModule, MNIST1DDataModule
from lightning_tricks.models import MLP


def fit_seconds(data, callbacks: list, epochs: int) -> float:
    pl.seed_everything(0, verbose=False)
    model = MLP(input_shape=data.input_shape, num_outputs=10)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            max_epochs=epochs,
            num_sanity_val_steps=0,
            callbacks=callbacks,
            logger=CSVLogger(root, name="bench", version=""),  # media and tables are written, as in a real run
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for name, data in (("digits", DigitsDataModule(seed=0)), ("mnist1d 20k", MNIST1DDataModule(num_samples=20000))):
        data.setup()
        fit_seconds(data, [], 1)  # warm-up
        variants = {
            "bare": lambda: [],
            "ranking": lambda: [DataInspection(at_fit_start=False)],
            "ranking+report": lambda: [DataInspection()],
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for key, make in variants.items():
                times[key].append(fit_seconds(data, make(), args.epochs))
        bare = statistics.median(times["bare"])
        print(f"{name}: bare fit ({args.epochs} epochs) {bare:.3f} s")
        for key in ("ranking", "ranking+report"):
            value = statistics.median(times[key])
            print(f"  with DataInspection ({key}): {value:.3f} s, ratio {value / bare:.3f}")


if __name__ == "__main__":
    main()
