"""Plot every learning-rate policy of ``lightning_tricks.schedules`` over one 400-iteration run.

Each curve is what a real scheduler sets on a real optimizer, step by step, from base_lr 0.1.
Usage: python examples/lr_policies.py [out.png]   (default: lr_policies.png)
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # after choosing the backend
import torch

from lightning_tricks.schedules import make_scheduler

ITERATIONS = 400
BASE_LR = 0.1

# Caffe's lr_policy names (and Smith's cyclical LR) -> arguments for a 400-iteration run.
SETTINGS: dict[str, dict] = {
    "fixed": {},
    "step": {"stepsize": 100, "gamma": 0.5},
    "exp": {"gamma": 0.99},
    "inv": {"gamma": 0.01, "power": 0.75},
    "multistep": {"stepvalues": [200, 300, 350], "gamma": 0.3},
    "poly": {"max_iter": ITERATIONS, "power": 2.0},
    "sigmoid": {"gamma": -0.03, "stepsize": 200},
    "cyclical": {"max_lr": 0.4, "stepsize": 50, "mode": "triangular2"},
}


def lr_curve(policy: str, **kwargs) -> list[float]:
    """The LR at every iteration of the run, as a training loop would see it."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    scheduler = make_scheduler(policy, optimizer, **kwargs)
    curve = []
    for _ in range(ITERATIONS):
        curve.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # a real loop computes gradients first; the LR does not depend on them
        scheduler.step()
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="lr_policies.png", help="the PNG to write")
    args = parser.parse_args()

    panels = {name: (name, kwargs, kwargs) for name, kwargs in SETTINGS.items()}
    # Warmup composes with any policy by multiplication: here 40 iterations from 0.1x in front of `step`.
    warmup = {"warmup_iters": 40, "warmup_start_factor": 0.1}
    panels["step + warmup"] = ("step", {**SETTINGS["step"], **warmup}, warmup)

    figure, axes = plt.subplots(3, 3, figsize=(11, 8), sharex=True, layout="constrained")
    for ax, (title, (policy, kwargs, shown)) in zip(axes.flat, panels.items(), strict=True):
        ax.plot(lr_curve(policy, **kwargs))
        ax.set_title(title + "\n" + ", ".join(f"{k}={v}" for k, v in shown.items()), fontsize=9)
        ax.set_ylim(bottom=0)
    for ax in axes[-1]:
        ax.set_xlabel("iteration")
    figure.suptitle(f"lightning_tricks.schedules, base_lr={BASE_LR}")
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
