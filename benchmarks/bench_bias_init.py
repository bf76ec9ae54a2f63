"""The hockey stick, with and without LastLayerBiasInit, on an imbalanced data set built offline.

Digits as "zero vs rest" (about 1:9), the same MLP, seed, batches and Adam 3e-4 for both runs; the
only difference is the output bias set from the training targets. Prints the initial loss, the
loss after 10 and 100 steps and the steps to reach a validation loss target, and saves both loss
curves as a PNG. Usage: python benchmarks/bench_bias_init.py [--steps 400] [--out outputs/benchmarks]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP
from lightning_tricks.utilities.plots import loss_curve


class DigitsZeroVsRest(DigitsDataModule):
    """Binary: is the digit a zero? About 10% positives."""

    task = "binary"
    num_classes = 2

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = super().load_arrays()
        return x, (y == 0).astype(np.int64)


def run(bias_init: bool, steps: int, target: float) -> dict:
    torch.manual_seed(0)
    dm = DigitsZeroVsRest(seed=0, batch_size=32)
    dm.setup()
    model = MLP(input_shape=dm.input_shape, num_outputs=1, task="binary")
    if bias_init:
        model.init_output_bias(dm.train_dataloader())  # what LastLayerBiasInit does at fit start
    optimizer = model.configure_optimizers()
    val_x, val_y = dm.datasets["val"].tensors
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = dm.datasets["train"].tensors
    losses, val_losses, reached = [], [], None
    for step in range(steps):
        idx = torch.randint(0, len(train_x), (32,), generator=generator)
        loss = model.compute_loss(model(train_x[idx]), train_y[idx])
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            val = float(model.compute_loss(model(val_x), val_y))
        val_losses.append(val)
        if reached is None and val <= target:
            reached = step + 1
    return {"losses": losses, "val": val_losses, "reached": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--target", type=float, default=0.1, help="validation BCE to reach")
    parser.add_argument("--out", default="outputs/benchmarks")
    args = parser.parse_args()
    plain, init = run(False, args.steps, args.target), run(True, args.steps, args.target)
    print(f"digits zero-vs-rest, MLP, Adam 3e-4, batch 32, {args.steps} steps; validation BCE target {args.target}")
    print("                      | default init | LastLayerBiasInit")
    for label, index in (("initial train loss", 0), ("train loss @ step 10", 9), ("train loss @ step 100", 99)):
        print(f"{label:22s}| {plain['losses'][index]:12.4f} | {init['losses'][index]:.4f}")
    for label, key in (("val loss @ step 10", 9), ("val loss @ step 100", 99)):
        print(f"{label:22s}| {plain['val'][key]:12.4f} | {init['val'][key]:.4f}")
    print(f"steps to val {args.target:<9}| {plain['reached']!s:>12} | {init['reached']}")
    if plain["reached"] and init["reached"]:
        print(f"ratio of steps (init / default): {init['reached'] / plain['reached']:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Validation loss over the whole val set (smooth), linear axis: the hockey stick is the default run's
    # first steps spent learning the class prior.
    figure = loss_curve(
        {"default init": plain["val"][:150], "LastLayerBiasInit": init["val"][:150]},
        "digits zero-vs-rest: validation BCE, first 150 steps",
        log_y=False,
    )
    figure.savefig(out / "bias_init_curves.png")
    print(f"plot: {out / 'bias_init_curves.png'}")


if __name__ == "__main__":
    main()
