"""Cost of SeedEverything against a bare Trainer: same data, model, epochs and checkpointing.

Runs alternate (bare, seeded, bare, seeded, ...) so drift in machine load hits both equally; prints
the median of each and their ratio. Usage: python benchmarks/bench_seed_everything.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_tricks import SeedEverything
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP


def fit_seconds(seeded: bool, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        pl.seed_everything(0, verbose=False)
        dm = DigitsDataModule(seed=0, batch_size=32)
        model = MLP(input_shape=dm.input_shape, num_outputs=10, dropout=0.1)
        # A checkpoint every epoch: SeedEverything's state_dict (RNG gather) runs each time.
        callbacks = [ModelCheckpoint(dirpath=root, save_last=True, every_n_epochs=1)]
        if seeded:
            callbacks.append(SeedEverything(0))
        trainer = pl.Trainer(
            max_epochs=epochs,
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # only the numbers below
    fit_seconds(False, 1)  # warm-up: imports, allocator, thread pools
    bare, seeded = [], []
    for _ in range(args.repeats):
        bare.append(fit_seconds(False, args.epochs))
        seeded.append(fit_seconds(True, args.epochs))
    b, s = statistics.median(bare), statistics.median(seeded)
    print(f"bare Trainer fit        : {b:.3f} s (median of {args.repeats}, {args.epochs} epochs, digits, MLP)")
    print(f"with SeedEverything     : {s:.3f} s")
    print(f"ratio seeded / bare     : {s / b:.3f}")


if __name__ == "__main__":
    main()
