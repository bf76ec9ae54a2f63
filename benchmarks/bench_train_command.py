"""Wall time of the main job, `lightning-tricks train`, against a bare-Trainer script doing the same fit.

Both run as fresh processes (imports included), with the default 20 epochs of the MLP on digits.
The command adds Hydra composition, the default recipe (seed, bias init, the preflight checks, full-set
loss, prediction dynamics, the first batch's picture), W&B offline logging, checkpoints, the Rich bar,
val+test of the best checkpoint and the summary; the ratio is what all of that costs.
Usage: python benchmarks/bench_train_command.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

BARE = """
import lightning.pytorch as pl
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP
pl.seed_everything(42, verbose=False)
dm = DigitsDataModule(seed=42)
model = MLP(input_shape=dm.input_shape, num_outputs=10, hidden_sizes=[128, 64])
trainer = pl.Trainer(max_epochs=20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
trainer.fit(model, datamodule=dm)
"""


def timed(cmd: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env={**os.environ, "WANDB_MODE": "offline"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bare, command = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            bare.append(timed([sys.executable, "-c", BARE], tmp))
            command.append(timed([sys.executable, "-m", "lightning_tricks", "train", f"hydra.run.dir=run{i}"], tmp))
    b, c = statistics.median(bare), statistics.median(command)
    print(f"bare Trainer script     : {b:.2f} s (median of {args.repeats}; 20 epochs, MLP, digits)")
    print(f"lightning-tricks train  : {c:.2f} s (default recipe: checks, bias init, monitors, W&B offline)")
    print(f"ratio command / bare    : {c / b:.2f}")


if __name__ == "__main__":
    main()
