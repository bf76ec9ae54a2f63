"""Run a side computation on the user's model without changing the run: snapshot, fresh optimizer, restore.

Checks train or probe the *real* module (so they see exactly the layers, devices and dtypes the run
uses) inside :func:`preserved`, which restores parameters, buffers (BatchNorm statistics), gradients
and train/eval modes in ``finally``; RNG is isolated with Lightning's ``isolate_rng``. Optimizers
built here are fresh and thrown away, so the user's optimizer state is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn


@contextmanager
def preserved(module: nn.Module, seed: int | None = 0) -> Iterator[nn.Module]:
    """Yield ``module``; afterwards its state, gradients, modes and the global RNG are as before.

    ``seed`` (if not None) seeds torch inside the block, so a check is deterministic whatever the run did.
    """
    state = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}
    grads = {name: p.grad for name, p in module.named_parameters()}
    modes = {name: m.training for name, m in module.named_modules()}
    requires_grad = {name: p.requires_grad for name, p in module.named_parameters()}
    with isolate_rng():
        if seed is not None:
            torch.manual_seed(seed)
        try:
            yield module
        finally:
            with torch.no_grad():
                current = module.state_dict(keep_vars=True)
                for key, value in state.items():
                    current[key].copy_(value)
            for name, p in module.named_parameters():
                p.grad = grads[name]
                p.requires_grad_(requires_grad[name])
            for name, m in module.named_modules():
                m.train(modes[name])


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no grad inside; each submodule's own mode and the global RNG restored afterwards.

    Lighter than :func:`preserved` (nothing is copied): for side evaluations that do not change weights.
    """
    modes = {name: m.training for name, m in module.named_modules()}
    with isolate_rng(), torch.no_grad():
        module.eval()
        try:
            yield module
        finally:
            for name, m in module.named_modules():
                m.train(modes[name])


def first_optimizer(configured: Any) -> torch.optim.Optimizer:
    """The (first) optimizer in whatever ``configure_optimizers`` returned."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict) and "optimizer" in configured:
        return first_optimizer(configured["optimizer"])
    if isinstance(configured, (list, tuple)) and configured:
        return first_optimizer(configured[0])
    raise TypeError(
        f"Cannot find an optimizer in what configure_optimizers() returned ({type(configured).__name__}); "
        f"pass `optimizer=` (e.g. functools.partial(torch.optim.Adam, lr=1e-3)) to the check."
    )


def fresh_optimizer(pl_module: pl.LightningModule, factory: Any = None) -> torch.optim.Optimizer:
    """A new optimizer over the module's parameters: ``factory(params)``, else from ``configure_optimizers``."""
    if factory is not None:
        return factory(pl_module.parameters())
    return first_optimizer(pl_module.configure_optimizers())
