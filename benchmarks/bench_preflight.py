"""Cost of the preflight checks, and of the gradient-dependency probe against the naive per-sample probe.

1. Full preflight (checks 1-5, defaults) on the default digits MLP, as a multiple of one training
   epoch of the same model with a bare Trainer (target <= 2x); and the same on a larger data set,
   since the checks cost a fixed number of small steps while an epoch grows with the data.
2. GradientDependencyProbe at batch sizes 16, 64, 256 as a multiple of one forward+backward of that
   batch (target <= 3x, flat in the batch size), beside the naive approach: one backward per sample.

Usage: python benchmarks/bench_preflight.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_tricks import run_preflight
from lightning_tricks.data import DigitsDataModule, MNIST1DDataModule
from lightning_tricks.functional.gradient_dependency import batch_dependency
from lightning_tricks.models import MLP


def seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


DATA = {
    "digits (default, 20 steps/epoch)": lambda: DigitsDataModule(seed=0),
    "mnist1d 20k samples (219 steps/epoch)": lambda: MNIST1DDataModule(num_samples=20000, seed=0),
}


def one_epoch(make_data) -> None:
    pl.seed_everything(0, verbose=False)
    dm = make_data()
    model = MLP(input_shape=dm.input_shape, num_outputs=10)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)


def preflight(make_data) -> None:
    pl.seed_everything(0, verbose=False)
    dm = make_data()
    report = run_preflight(MLP(input_shape=dm.input_shape, num_outputs=10), dm)
    assert report.passed, report


def probe_costs(batch: int, repeats: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    x = torch.randn(batch, 1, 8, 8)

    def forward_backward() -> None:
        model(x).sum().backward()

    def probe() -> None:
        leaf = x.clone().requires_grad_(True)
        batch_dependency(model(leaf), leaf)

    def naive() -> None:  # what a per-sample check costs: one backward per output
        leaf = x.clone().requires_grad_(True)
        out = model(leaf)
        for i in range(batch):
            torch.autograd.grad(out[i].sum(), leaf, retain_graph=True)

    return seconds(forward_backward, repeats), seconds(probe, repeats), seconds(naive, max(1, repeats // 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for name, factory in DATA.items():
        data = factory()
        data.setup()  # generate once, outside the timings; the module keeps its tensors

        def make_data(data=data):
            return data

        one_epoch(make_data)  # warm-up
        epoch = seconds(lambda m=make_data: one_epoch(m), args.repeats)
        checks = seconds(lambda m=make_data: preflight(m), args.repeats)
        print(f"{name}: one epoch (bare Trainer, MLP) {epoch:.3f} s, full preflight (checks 1-5) {checks:.3f} s")
        print(f"  ratio preflight / epoch: {checks / epoch:.2f}  (target <= 2)")
    print()
    print("batch | fwd+bwd ms | probe ms | probe / fwd+bwd | naive ms | naive / fwd+bwd")
    for batch in (16, 64, 256):
        fb, probe, naive = probe_costs(batch, args.repeats * 4)
        row = f"{batch:5d} | {fb * 1e3:10.2f} | {probe * 1e3:8.2f} | {probe / fb:15.2f}"
        print(f"{row} | {naive * 1e3:8.1f} | {naive / fb:15.1f}")


if __name__ == "__main__":
    main()
