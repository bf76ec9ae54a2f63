"""Learning-rate schedulers: Caffe's seven policies and Smith's cyclical LR, each with an optional linear warmup.

Recipe: use a preset policy (Caffe's ``fixed``, ``step``, ``exp``, ``inv``, ``multistep``,
``poly``, ``sigmoid``); in the source's experiments step/multistep converge best, exp/poly next,
inv and fixed worst. Letting the LR vary between a lower and an upper bound (cyclical LR) helps
escape saddle points.

The class names are the policy names (``schedules.Step``, ``schedules.Poly``): the module says
they are schedules, and ``make_scheduler("step", ...)`` takes Caffe's ``lr_policy`` strings.

Each scheduler is a ``torch.optim.lr_scheduler.LRScheduler`` whose LR is computed in closed form
from ``last_epoch`` (the number of ``step()`` calls, Caffe's iteration), never from the previous
LR: restoring ``state_dict`` continues a run exactly. Each param group's initial LR is its
``base_lr``, so groups keep their ratios. ``interval`` says what an iteration is for Lightning
(``"step"``: a batch, as in Caffe; ``"epoch"``); ``ReferenceModule`` passes it to Lightning, and
in your own module::

    scheduler = schedules.Step(optimizer, gamma=0.5, stepsize=1000, warmup_iters=100)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": scheduler.interval}}
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from typing_extensions import override

from lightning_tricks.functional.lr_policies import (
    CYCLICAL_MODES,
    cyclical_lr,
    exp_lr,
    fixed_lr,
    inv_lr,
    multistep_lr,
    poly_lr,
    sigmoid_lr,
    step_lr,
    warmup_factor,
)
from lightning_tricks.utilities.arguments import check_float, check_int

INTERVALS = ("step", "epoch")


def _check_decay(gamma: Any, owner: str) -> float:
    # A gamma above 1 makes the LR grow without bound; it is almost always 10 typed for 0.1.
    return check_float(gamma, "gamma", "a decay factor in (0, 1]", lambda g: 0 < g <= 1, owner=owner)


class Policy(LRScheduler):
    """The shared shell: warmup, interval and the closed form; a subclass gives ``policy_lr``.

    Args:
        optimizer: the optimizer whose param groups' ``lr`` are the policy's ``base_lr``.
        warmup_iters: iterations over which the LR is multiplied by a factor rising linearly from
            ``warmup_start_factor`` to 1 (0: no warmup). The policy itself counts from 0 meanwhile.
        warmup_start_factor: the warmup's first multiplier, in [0, 1].
        interval: ``"step"`` (an iteration is a batch, as in Caffe) or ``"epoch"``, for Lightning.
        last_epoch: torch's resume argument; leave it at -1 and restore with ``load_state_dict``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        last_epoch: int = -1,
    ) -> None:
        owner = type(self).__name__
        self.warmup_iters = check_int(warmup_iters, "warmup_iters", minimum=0, owner=owner)
        self.warmup_start_factor = check_float(
            warmup_start_factor, "warmup_start_factor", "a number in [0, 1]", lambda f: 0 <= f <= 1, owner=owner
        )
        if interval not in INTERVALS:
            raise ValueError(f"{owner}: `interval` must be one of {INTERVALS}, got {interval!r}.")
        self.interval = interval
        # torch's constructor already sets the LR of iteration 0, so the subclass's arguments come first.
        super().__init__(optimizer, last_epoch)

    def policy_lr(self, it: int, base_lr: float, group: int) -> float:
        """The policy's LR for param group ``group`` at iteration ``it``, before warmup."""
        raise NotImplementedError

    def lr_at(self, it: int) -> list[float]:
        """Every param group's LR at iteration ``it``, warmup included: the closed form, no state touched."""
        factor = warmup_factor(it, self.warmup_iters, self.warmup_start_factor)
        return [factor * self.policy_lr(it, base_lr, group) for group, base_lr in enumerate(self.base_lrs)]

    @override
    def get_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)


class Fixed(Policy):
    """Caffe's ``fixed``: ``base_lr`` throughout (with a warmup, a warmup then constant)."""

    @override
    def policy_lr(self, it: int, base_lr: float, group: int) -> float:
        return fixed_lr(it, base_lr)


class Step(Policy):
    """Caffe's ``step``: ``base_lr * gamma ** floor(it / stepsize)``."""

    def __init__(
        self,
        optimizer: Optimizer,
        stepsize: int,
        gamma: float = 0.1,
        *,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        last_epoch: int = -1,
    ) -> None:
        self.stepsize = check_int(stepsize, "stepsize", owner="Step")
        self.gamma = _check_decay(gamma, "Step")
        super().__init__(
            optimizer,
            warmup_iters=warmup_iters,
            warmup_start_factor=warmup_start_factor,
            interval=interval,
            last_epoch=last_epoch,
        )

    @override
    def policy_lr(self, it: int, base_lr: float, group: int) -> float:
        return step_lr(it, base_lr, self.gamma, self.stepsize)


class Exp(Policy):
    """Caffe's ``exp``: ``base_lr * gamma ** it``."""

    def __init__(
        self,
        optimizer: Optimizer,
        gamma: float,
        *,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        last_epoch: int = -1,
    ) -> None:
        self.gamma = _check_decay(gamma, "Exp")
        super().__init__(
            optimizer,
            warmup_iters=warmup_iters,
            warmup_start_factor=warmup_start_factor,
            interval=interval,
            last_epoch=last_epoch,
        )

    @override
    def policy_lr(self, it: int, base_lr: float, group: int) -> float:
        return exp_lr(it, base_lr, self.gamma)


class Inv(Policy):
    """Caffe's ``inv``: ``base_lr * (1 + gamma * it) ** (-power)`` (torch has none)."""

    def __init__(
        self,
        optimizer: Optimizer,
        gamma: float,
        power: float,
        *,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        last_epoch: int = -1,
    ) -> None:
        self.gamma = check_float(gamma, "gamma", "a number >= 0", lambda g: g >= 0, owner="Inv")
        self.power = check_float(power, "power", "a number >= 0", lambda p: p >= 0, owner="Inv")
        super().__init__(
            optimizer,
            warmup_iters=warmup_iters,
            warmup_start_factor=warmup_start_factor,
            interval=interval,
            last_epoch=last_epoch,
        )

    @override
    def policy_lr(self, it: int, base_lr: float, group: int) -> float:
        return inv_lr(it, base_lr, self.gamma, self.power)


class MultiStep(Policy):
    """Caffe's ``multistep``: multiplied by ``gamma`` at each of the iterations ``stepvalues``."""

    def __init__(
        self,
        optimizer: Optimizer,
        stepvalues: Sequence[int],
        gamma: float = 0.1,
        *,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        last_epoch: int = -1,
    ) -> None:
        values = list(stepvalues) if isinstance(stepvalues, Sequence) and not isinstance(stepvalues, str) else None
        if (
            not values
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)
            or any(a >= b for a, b in itertools.pairwise(values))
        ):
            raise ValueError(
                f"MultiStep: `stepvalues` must be a non-empty, strictly increasing list of integers >= 1, "
                f"got {stepvalues!r}."
            )
        self.stepvalues = values
        self.gamma = _check_decay(gamma, "MultiStep")
        super().__init__(
            optimizer,
            warmup_iters=warmup_iters,
            warmup_start_factor=warmup_start_factor,
            interval=interval,
            last_epoch=last_epoch,
        )

    @override
    def policy_lr(self, it: int, base_lr: float, group: int) -> float:
        return multistep_lr(it, base_lr, self.gamma, self.stepvalues)


class Poly(Policy):
    """Caffe's ``poly``: ``base_lr * (1 - it / max_iter) ** power``, reaching 0 at ``max_iter``.

    ``max_iter`` is the run's length in iterations and must be given, except in a
    ``ReferenceModule``'s scheduler factory (Hydra ``max_iter: null``, or LightningCLI leaving the
    default), where it is filled in from the Trainer: ``estimated_stepping_batches`` for
    ``interval="step"``, ``max_epochs`` for ``"epoch"``. (Its default is None for that reason.)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_iter: int | None = None,
        power: float = 1.0,
        *,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        last_epoch: int = -1,
    ) -> None:
        if max_iter is None:
            raise ValueError(
                "Poly: `max_iter` must be an integer >= 1 (the run's length in iterations), got None. "
                "Set it, or build the scheduler through ReferenceModule, which fills in `max_iter=None` "
                "from the Trainer."
            )
        self.max_iter = check_int(max_iter, "max_iter", owner="Poly")
        self.power = check_float(power, "power", "a number >= 0", lambda p: p >= 0, owner="Poly")
        super().__init__(
            optimizer,
            warmup_iters=warmup_iters,
            warmup_start_factor=warmup_start_factor,
            interval=interval,
            last_epoch=last_epoch,
        )

    @override
    def policy_lr(self, it: int, base_lr: float, group: int) -> float:
        return poly_lr(it, base_lr, self.power, self.max_iter)


class Sigmoid(Policy):
    """Caffe's ``sigmoid``: ``base_lr / (1 + exp(-gamma * (it - stepsize)))`` (torch has none).

    ``gamma < 0`` decays around iteration ``stepsize`` (the usual choice), ``gamma > 0`` rises.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        gamma: float,
        stepsize: int,
        *,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        last_epoch: int = -1,
    ) -> None:
        # 0 would silently halve the LR for the whole run.
        self.gamma = check_float(
            gamma, "gamma", "a non-zero number (< 0 decays, > 0 rises)", lambda g: g != 0, owner="Sigmoid"
        )
        self.stepsize = check_int(stepsize, "stepsize", owner="Sigmoid")
        super().__init__(
            optimizer,
            warmup_iters=warmup_iters,
            warmup_start_factor=warmup_start_factor,
            interval=interval,
            last_epoch=last_epoch,
        )

    @override
    def policy_lr(self, it: int, base_lr: float, group: int) -> float:
        return sigmoid_lr(it, base_lr, self.gamma, self.stepsize)


class Cyclical(Policy):
    """Smith's cyclical LR (CLR): between each group's ``base_lr`` (lower bound) and its ``max_lr``.

    ``stepsize`` is half a cycle, in iterations (the paper's name); Smith suggests 2-10 epochs.
    ``mode``: ``triangular`` (constant amplitude), ``triangular2`` (halved every cycle),
    ``exp_range`` (scaled by ``gamma ** it``). ``max_lr`` is a float (the first param group's
    upper bound; the other groups' bounds keep their ratio to their ``base_lr``) or one per group.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        stepsize: int,
        mode: str = "triangular",
        gamma: float = 1.0,
        *,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        interval: str = "step",
        last_epoch: int = -1,
    ) -> None:
        self.stepsize = check_int(stepsize, "stepsize", owner="Cyclical")
        if mode not in CYCLICAL_MODES:
            raise ValueError(f"Cyclical: `mode` must be one of {CYCLICAL_MODES}, got {mode!r}.")
        self.mode = mode
        self.gamma = check_float(gamma, "gamma", "a factor in (0, 1]", lambda g: 0 < g <= 1, owner="Cyclical")
        self.max_lrs = self._upper_bounds(optimizer, max_lr)
        super().__init__(
            optimizer,
            warmup_iters=warmup_iters,
            warmup_start_factor=warmup_start_factor,
            interval=interval,
            last_epoch=last_epoch,
        )

    @staticmethod
    def _upper_bounds(optimizer: Optimizer, max_lr: float | Sequence[float]) -> list[float]:
        # torch sets `initial_lr` on first construction and keeps it on resume: the base LRs.
        base_lrs = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
        if isinstance(max_lr, Sequence) and not isinstance(max_lr, str):
            if len(max_lr) != len(base_lrs):
                raise ValueError(
                    f"Cyclical: `max_lr` must be one float or one per param group ({len(base_lrs)}), got {max_lr!r}."
                )
            bounds = [check_float(m, "max_lr", "a number", lambda m: True, owner="Cyclical") for m in max_lr]
        else:
            top = check_float(max_lr, "max_lr", "a number", lambda m: True, owner="Cyclical")
            # The first group's bound is max_lr itself; the others keep their ratio to their base_lr.
            bounds = [top] + [top * base / base_lrs[0] if base_lrs[0] else top for base in base_lrs[1:]]
        for group, (low, high) in enumerate(zip(base_lrs, bounds, strict=True)):
            if high < low:
                raise ValueError(
                    f"Cyclical: `max_lr` must be >= the optimizer's lr (the lower bound), got max_lr={high!r} "
                    f"< lr={low!r} in param group {group}."
                )
        return bounds

    @override
    def policy_lr(self, it: int, base_lr: float, group: int) -> float:
        return cyclical_lr(it, base_lr, self.max_lrs[group], self.stepsize, self.mode, self.gamma)


#: Caffe's ``lr_policy`` names (and ``cyclical``) to their schedulers.
POLICIES: dict[str, type[Policy]] = {
    "fixed": Fixed,
    "step": Step,
    "exp": Exp,
    "inv": Inv,
    "multistep": MultiStep,
    "poly": Poly,
    "sigmoid": Sigmoid,
    "cyclical": Cyclical,
}


def make_scheduler(policy: str, optimizer: Optimizer, **kwargs: Any) -> Policy:
    """The scheduler for a policy name, e.g. ``make_scheduler("step", optimizer, stepsize=1000, gamma=0.1)``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> make_scheduler("step", optimizer, stepsize=10).gamma
    0.1
    >>> make_scheduler("cosine", optimizer)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `policy` must be one of ['cyclical', 'exp', 'fixed', 'inv', ..., 'step'], got 'cosine'.
    """
    if policy not in POLICIES:
        raise ValueError(f"`policy` must be one of {sorted(POLICIES)}, got {policy!r}.")
    return POLICIES[policy](optimizer, **kwargs)
