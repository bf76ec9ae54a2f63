"""Can the range test's suggestion be trusted? Ours vs Lightning's ``lr_find`` vs the best LR of a grid.

For each case (digits MLP/CNN and MNIST-1D MLP/CNN with Adam; a linear regression with plain SGD,
where Lightning's slope-against-linear-LR rule is known to fail) the same model is trained for a
fixed number of epochs with:

- every LR of a log grid with half-decade steps (1e-5 … 1): the best one is the reference;
  each score is the mean over 3 data orders (one run is too noisy to rank neighbouring LRs);
- each of our suggestion rules (one 100-step sweep 1e-7 → 1, ``lr_range_test``, the callback's code);
- Lightning's ``Tuner.lr_find`` suggestion (same sweep: 100 steps, 1e-7 → 1).

It prints validation accuracy (loss for the regression) per LR and whether each suggestion reaches
97% of the best grid accuracy (or at most 1.05 times the best grid loss). Then the cost: the range test's
wall time inside a fit, as a multiple of one training epoch on digits (target <= 1x for 100 steps).

Usage: python benchmarks/bench_lr_range_test.py [--cases digits-mlp,...] [--epochs 10]
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
import warnings
from functools import partial

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.tuner import Tuner

from lightning_tricks.callbacks.lr_range_test import LRRangeTest, lr_range_test
from lightning_tricks.data import DigitsDataModule, MNIST1DDataModule, SyntheticRegressionDataModule
from lightning_tricks.functional.lr_range import SUGGESTION_RULES
from lightning_tricks.models import CNN, MLP

GRID = [10 ** (e / 2) for e in range(-10, 1)]  # 1e-5, 3.2e-5, ..., 1


def case(name: str):
    """(data module, model factory taking an lr, optimizer class) for a benchmark case."""
    if name == "linreg-sgd":
        dm = SyntheticRegressionDataModule(seed=0)
        opt = torch.optim.SGD
        make = partial(MLP, hidden_sizes=[], task="regression")
    else:
        data, arch = name.split("-")
        dm = DigitsDataModule(seed=0) if data == "digits" else MNIST1DDataModule(seed=0)
        opt = torch.optim.Adam
        # batch_norm=False for the CNN: as measured for the README, before the CNN had BatchNorm
        make = partial(MLP, task="multiclass") if arch == "mlp" else partial(CNN, task="multiclass", batch_norm=False)
    dm.prepare_data()
    dm.setup("fit")

    def model(lr: float) -> pl.LightningModule:
        torch.manual_seed(0)
        return make(input_shape=dm.input_shape, num_outputs=dm.num_outputs, optimizer=partial(opt, lr=lr))

    return dm, model


def train_and_score(dm, model_for_lr, lr: float, epochs: int, seeds: int) -> float:
    """Plain loop (fast, deterministic): ``epochs`` epochs of batch 64, then val accuracy (val MSE for regression).

    Averaged over ``seeds`` data orders (same initial weights): one run's score is too noisy to rank LRs.
    """
    x, y = dm.datasets["train"].tensors
    val_x, val_y = dm.datasets["val"].tensors
    scores = []
    for seed in range(seeds):
        model = model_for_lr(lr)
        optimizer = model.configure_optimizers()
        order = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            model.train()
            permutation = torch.randperm(len(x), generator=order)
            for start in range(0, len(x), 64):
                index = permutation[start : start + 64]
                loss = model.compute_loss(model(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            out = model(val_x)
        if model.task == "regression":
            value = float(model.compute_loss(out, val_y))
            scores.append(value if math.isfinite(value) else 1e9)
        else:
            scores.append(float((out.argmax(-1) == val_y).float().mean()))
    return float(np.mean(scores))


def lightning_suggestion(dm, model: pl.LightningModule) -> float | None:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=100,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    finder = Tuner(trainer).lr_find(model, datamodule=dm, min_lr=1e-7, max_lr=1.0, num_training=100, update_attr=False)
    return finder.suggestion()


def compare(name: str, epochs: int, seeds: int) -> list[str]:
    dm, model = case(name)
    regression = name == "linreg-sgd"
    grid = {lr: train_and_score(dm, model, lr, epochs, seeds) for lr in GRID}
    best_lr = min(grid, key=grid.get) if regression else max(grid, key=grid.get)
    best = grid[best_lr]
    sweep_model = model(1e-3)
    result = lr_range_test(sweep_model, dm.train_dataloader(), num_steps=100, start_lr=1e-7, end_lr=1.0)
    picks = {f"ours:{rule}": lr for rule, lr in result.suggestions.items()}
    picks["lightning"] = lightning_suggestion(dm, model(1e-3))
    lines = [
        f"\n## {name}: {epochs} epochs, {'val MSE' if regression else 'val accuracy'}, mean of {seeds} data orders"
    ]
    lines.append("grid: " + "  ".join(f"{lr:.0e}:{v:.3g}" for lr, v in grid.items()))
    lines.append(f"best grid lr {best_lr:.1e} -> {best:.4g}")
    lines.append("| suggestion | lr | score | vs best | ok |")
    lines.append("|---|---|---|---|---|")
    for label, lr in picks.items():
        if lr is None:
            lines.append(f"| {label} | none | - | - | no |")
            continue
        score = train_and_score(dm, model, lr, epochs, seeds)
        ratio = score / best if best else math.nan
        ok = ratio <= 1.05 if regression else ratio >= 0.97
        lines.append(f"| {label} | {lr:.2e} | {score:.4g} | {ratio:.3f} | {'yes' if ok else 'NO'} |")
    return lines


def cost(repeats: int) -> str:
    """Wall time the callback adds to a digits fit, in units of one training epoch of that fit."""

    scratch = tempfile.mkdtemp(prefix="bench-lr-range-")  # the curve and table files land here

    def fit(callbacks: list, epochs: int) -> float:
        dm = DigitsDataModule(seed=0)
        torch.manual_seed(0)
        model = MLP(input_shape=dm.input_shape, num_outputs=dm.num_outputs)
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=scratch,
            callbacks=callbacks,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        return time.perf_counter() - start

    fit([], 1)  # warm-up: imports, data generation caches
    bare_1, bare_3, tested = [], [], []
    for _ in range(repeats):
        bare_1.append(fit([], 1))
        bare_3.append(fit([], 3))
        tested.append(fit([LRRangeTest(num_steps=100)], 1))
    epoch = (np.median(bare_3) - np.median(bare_1)) / 2  # one more epoch, fixed costs cancelled
    added = np.median(tested) - np.median(bare_1)
    dm = DigitsDataModule(seed=0)
    dm.setup("fit")
    model = MLP(input_shape=dm.input_shape, num_outputs=dm.num_outputs)
    sweeps = []
    for _ in range(repeats):
        start = time.perf_counter()
        lr_range_test(model, dm.train_dataloader(), num_steps=100)
        sweeps.append(time.perf_counter() - start)
    sweep = np.median(sweeps)
    steps_per_epoch = len(dm.train_dataloader())
    return (
        f"\n## cost on digits (MLP, batch 64, {repeats} repeats, medians)\n"
        f"one epoch {epoch * 1e3:.0f} ms; fit of 1 epoch {np.median(bare_1) * 1e3:.0f} ms, "
        f"with LRRangeTest(100 steps) {np.median(tested) * 1e3:.0f} ms -> the range test costs "
        f"{added * 1e3:.0f} ms = {added / epoch:.2f}x one epoch\n"
        f"of which the sweep itself (no plot, no logging) {sweep * 1e3:.0f} ms = {sweep / epoch:.2f}x one "
        f"epoch of {steps_per_epoch} steps (validation included), {sweep / (epoch * 100 / steps_per_epoch):.2f}x the "
        f"time of 100 of the fit's steps; the rest is the plot and the table"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="digits-mlp,digits-cnn,mnist1d-mlp,mnist1d-cnn,linreg-sgd")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="data orders averaged per score")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the cost measurement")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(f"rules: {sorted(SUGGESTION_RULES)}; grid: {len(GRID)} LRs 1e-5..1 (half-decade steps)")
    for name in filter(None, args.cases.split(",")):
        start = time.perf_counter()
        print("\n".join(compare(name, args.epochs, args.seeds)), f"\n({time.perf_counter() - start:.0f} s)", flush=True)
    print(cost(args.repeats))


if __name__ == "__main__":
    main()
