"""Run a side computation on the user's model without changing the run: snapshot, fresh optimizer, restore.

Checks train or probe the *real* module (so they see exactly the layers, devices and dtypes the run
uses) inside :func:`preserved`, which restores parameters, buffers (BatchNorm statistics), gradients
and train/eval modes in ``finally``; RNG is isolated with Lightning's ``isolate_rng``. Optimizers
built here are fresh and thrown away, so the user's optimizer state is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from lightning_tricks.utilities.protocol import AdapterError


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


def schedulers_in(configured: Any) -> list[LRScheduler]:
    """Every LR scheduler in whatever ``configure_optimizers`` returned (bare, in lists, in dicts).

    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> step = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    >>> schedulers_in({"optimizer": opt, "lr_scheduler": {"scheduler": step, "interval": "step"}}) == [step]
    True
    """
    if isinstance(configured, LRScheduler):
        return [configured]
    if isinstance(configured, dict):
        configured = list(configured.values())
    if isinstance(configured, (list, tuple)):
        return [scheduler for item in configured for scheduler in schedulers_in(item)]
    return []


def configured_lrs(optimizer: torch.optim.Optimizer, schedulers: Iterable[Any] = ()) -> list[float]:
    """The LR the user configured for each param group of ``optimizer``: the peak its schedule names.

    Building a scheduler changes the optimizer's LR at once (torch takes its first step in the
    constructor), so the LR a fresh optimizer holds is the schedule's start, not the user's LR.
    The rule, per param group:

    * ``max_lr`` where a scheduler takes one: ``OneCycleLR`` records it in each group and
      ``CyclicLR`` (and ``lightning_tricks.schedules.Cyclical``) keeps it as ``max_lrs``; both
      overwrite the optimizer's own ``lr`` (OneCycle starts at ``max_lr / div_factor``).
    * otherwise ``initial_lr``: torch's ``LRScheduler`` records the group's ``lr`` there before its
      first step (the first scheduler built on the optimizer does; later ones keep it), so it is the
      LR the optimizer was built with, which a warmup starts below and a decay falls from.
    * otherwise (no scheduler, or ``ReduceLROnPlateau``, which changes nothing at first) ``lr``.

    >>> opt = torch.optim.AdamW([{"params": [torch.zeros(1, requires_grad=True)], "lr": 3e-4},
    ...                          {"params": [torch.zeros(1, requires_grad=True)], "lr": 1e-3}])
    >>> one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[3e-4, 1e-3], total_steps=100)
    >>> [round(g["lr"], 8) for g in opt.param_groups], configured_lrs(opt)
    ([1.2e-05, 4e-05], [0.0003, 0.001])
    """
    peaks: dict[int, float] = {}
    for scheduler in schedulers:
        max_lrs = getattr(scheduler, "max_lrs", None)
        if getattr(scheduler, "optimizer", None) is optimizer and isinstance(max_lrs, (list, tuple)):
            peaks.update(enumerate(max_lrs))
    lrs = []
    for index, group in enumerate(optimizer.param_groups):
        lr = group.get("max_lr", peaks.get(index, group.get("initial_lr", group["lr"])))
        lrs.append(float(lr))
    return lrs


def fresh_optimizer(
    pl_module: pl.LightningModule, factory: Any = None, owner: str = "", lr_factor: float = 1.0
) -> torch.optim.Optimizer:
    """A new optimizer over the module's parameters: ``factory(params)``, else from ``configure_optimizers``.

    From ``configure_optimizers``, every param group starts at the LR the user configured
    (:func:`configured_lrs`), not where its scheduler's first step put it; the scheduler is never
    stepped, so a check trains at that LR throughout. ``lr_factor`` multiplies every group's LR
    (a check that tries LRs around the configured one keeps the groups' ratios). ``owner`` names
    the check in errors.
    """
    if factory is not None:
        optimizer = factory(pl_module.parameters())
        lrs = [float(group["lr"]) for group in optimizer.param_groups]
    else:
        try:
            configured = pl_module.configure_optimizers()
        except Exception as err:
            raise AdapterError(
                f"{owner or 'A check'}: {type(pl_module).__name__}.configure_optimizers() failed when called for a "
                f"fresh optimizer ({type(err).__name__}: {err}). Pass `optimizer=` (e.g. functools.partial("
                f"torch.optim.Adam, lr=1e-3)) to the check."
            ) from err
        optimizer = first_optimizer(configured)
        lrs = configured_lrs(optimizer, schedulers_in(configured))
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        if isinstance(group["lr"], torch.Tensor):  # a tensor LR (capturable or fused optimizers) keeps its type
            group["lr"].fill_(lr * lr_factor)
        else:
            group["lr"] = lr * lr_factor
    return optimizer
