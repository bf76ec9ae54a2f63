"""Recipe 3.7: scale the learning rate with the batch size (linear or square-root rule), and warm up to it.

When the batch grows N-fold the gradient estimate averages N times more samples: the linear rule
(Goyal et al. 2017) takes N times larger steps so an epoch moves the weights as far as before; the
square-root rule (Krizhevsky 2014, Hoffer et al. 2017) keeps the variance of the update constant.
These are pure functions on numbers and torch optimizers; the callbacks ``LRBatchScaling`` and
``BatchSizeSchedule`` call them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from lightning_tricks.functional.lr_policies import warmup_factor

RULES = ("linear", "sqrt")


def check_rule(rule: Any, owner: str = "", argument: str = "rule") -> str:
    """``rule`` if it is a known scaling rule, else a ``ValueError`` naming it.

    >>> check_rule("square", owner="LRBatchScaling")
    Traceback (most recent call last):
    ...
    ValueError: LRBatchScaling: `rule` must be one of 'linear', 'sqrt', got 'square'.
    """
    if rule not in RULES:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}`{argument}` must be one of {', '.join(map(repr, RULES))}, got {rule!r}.")
    return rule


def lr_scale_factor(batch_size: float, reference_batch_size: float, rule: str = "linear") -> float:
    """The factor to multiply an LR tuned at ``reference_batch_size`` by, for ``batch_size``.

    >>> lr_scale_factor(32, 16), lr_scale_factor(64, 16, "sqrt")
    (2.0, 2.0)
    """
    check_rule(rule)
    if not batch_size > 0 or not reference_batch_size > 0:
        raise ValueError(f"batch sizes must be > 0, got {batch_size!r} and {reference_batch_size!r}.")
    ratio = batch_size / reference_batch_size
    return float(ratio if rule == "linear" else math.sqrt(ratio))


def scale_lr(lr: float, batch_size: float, reference_batch_size: float, rule: str = "linear") -> float:
    """``lr`` tuned at ``reference_batch_size``, scaled for ``batch_size``: ``lr * B / B_ref`` or ``* sqrt(B / B_ref)``.

    >>> scale_lr(1e-3, 32, 16)
    0.002
    >>> round(scale_lr(1e-3, 32, 16, "sqrt"), 10)
    0.0014142136
    """
    return lr * lr_scale_factor(batch_size, reference_batch_size, rule)


def effective_batch_size(per_device: int, world_size: int = 1, accumulate_grad_batches: int = 1) -> int:
    """Samples behind one optimizer step: per-device batch x processes x accumulated batches.

    >>> effective_batch_size(16, world_size=2, accumulate_grad_batches=4)
    128
    """
    return int(per_device) * int(world_size) * int(accumulate_grad_batches)


def scale_optimizer_lr(optimizer: torch.optim.Optimizer, factor: float, schedulers: Iterable[Any] = ()) -> list[float]:
    """Multiply every param group's LR of ``optimizer`` by ``factor``, in place; return the new LRs.

    Ratios between groups are kept. A scheduler must then follow the scaled LR, not undo it:
    chainable schedulers (StepLR, ExponentialLR, ...) read ``group["lr"]``; closed-form ones
    (LambdaLR, CosineAnnealingLR, a scheduler's ``_get_closed_form_lr``) recompute from
    ``base_lrs``, and on a reload from ``group["initial_lr"]``; OneCycleLR reads the groups'
    ``max_lr``/``min_lr`` and CyclicLR its ``max_lrs``. All of them are scaled, for the
    ``schedulers`` that drive this optimizer.

    >>> opt = torch.optim.SGD([{"params": [torch.zeros(1)], "lr": 0.1}, {"params": [torch.zeros(1)], "lr": 0.01}])
    >>> scale_optimizer_lr(opt, 4.0)
    [0.4, 0.04]
    """
    if not factor > 0 or not math.isfinite(factor):
        raise ValueError(f"the LR factor must be a finite number > 0, got {factor!r}.")
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if isinstance(group.get(key), (int, float)):
                group[key] = group[key] * factor
            elif isinstance(group.get(key), torch.Tensor):  # a tensor LR (capturable optimizers): keep its type
                group[key].mul_(factor)
    for scheduler in _with_nested(schedulers):
        if getattr(scheduler, "optimizer", None) is not optimizer:
            continue
        for attribute in ("base_lrs", "max_lrs"):
            values = getattr(scheduler, attribute, None)
            if isinstance(values, list):
                setattr(scheduler, attribute, [v * factor for v in values])
    return [float(g["lr"]) for g in optimizer.param_groups]


def _with_nested(schedulers: Iterable[Any]) -> list[Any]:
    """The schedulers and those they wrap: ``SequentialLR`` (a warmup, then a decay) and ``ChainedScheduler``.

    A wrapped scheduler keeps its own ``base_lrs``, and ``SequentialLR`` restarts the next one from
    them in closed form at its milestone: scaled only at the top, a warmup then cosine schedule would
    fall back to the unscaled LR after the warmup. torch keeps them in ``_schedulers`` (no public
    accessor; its own ``SequentialLR.recursive_undo`` walks the same attribute).
    """
    found: list[Any] = []
    for scheduler in schedulers:
        found.append(scheduler)
        found.extend(_with_nested(getattr(scheduler, "_schedulers", None) or ()))
    return found


def scaling_warmup_factor(step: int, warmup_steps: int, factor: float) -> float:
    """The multiplier of the scaled LR at optimizer step ``step`` of a linear warmup from ``1/factor`` to 1.

    Goyal et al. (2017): start at the LR tuned for the reference batch (the scaled LR divided by
    ``factor``) and reach the scaled LR after ``warmup_steps`` steps, linearly; 1 from then on.
    The ramp is the schedules' linear warmup, started at ``1/factor``.

    >>> [scaling_warmup_factor(s, 4, 8.0) for s in (0, 2, 4, 10)]
    [0.125, 0.5625, 1.0, 1.0]
    """
    if warmup_steps <= 0:
        return 1.0
    return warmup_factor(step, warmup_steps, 1.0 / factor)
