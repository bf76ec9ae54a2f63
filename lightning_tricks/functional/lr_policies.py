"""Learning-rate policies in closed form: Caffe's seven, linear warmup and Smith's cyclical LR.

Every function gives the learning rate at iteration ``it`` (0 is the first optimizer step) from the
policy's arguments alone, with Caffe's formulas and argument names (``base_lr``, ``gamma``,
``power``, ``stepsize``, ``stepvalues``, ``max_iter``; Caffe's ``SGDSolver::GetLearningRate``).
No state, no optimizer: a scheduler built on them lands on the same value at iteration ``it``
however it got there, which is what makes a resumed run continue exactly.

The functions trust their arguments; ``lightning_tricks.schedules`` checks them once, at
construction. Each is linear in ``base_lr``, so param groups with different base rates keep
their ratios.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

CYCLICAL_MODES = ("triangular", "triangular2", "exp_range")


def fixed_lr(it: int, base_lr: float) -> float:
    """``base_lr`` at every iteration.

    >>> fixed_lr(1000, base_lr=0.1)
    0.1
    """
    return base_lr


def step_lr(it: int, base_lr: float, gamma: float, stepsize: int) -> float:
    """``base_lr * gamma ** floor(it / stepsize)``: multiplied by ``gamma`` every ``stepsize`` iterations.

    >>> [step_lr(it, base_lr=1.0, gamma=0.5, stepsize=10) for it in (0, 9, 10, 25)]
    [1.0, 1.0, 0.5, 0.25]
    """
    return base_lr * gamma ** (it // stepsize)


def exp_lr(it: int, base_lr: float, gamma: float) -> float:
    """``base_lr * gamma ** it``: multiplied by ``gamma`` at every iteration.

    >>> exp_lr(2, base_lr=1.0, gamma=0.5)
    0.25
    """
    return base_lr * gamma**it


def inv_lr(it: int, base_lr: float, gamma: float, power: float) -> float:
    """``base_lr * (1 + gamma * it) ** (-power)``: an inverse-power decay (Caffe's LeNet solver).

    >>> inv_lr(3, base_lr=1.0, gamma=1.0, power=2.0)
    0.0625
    """
    return base_lr * (1.0 + gamma * it) ** (-power)


def multistep_lr(it: int, base_lr: float, gamma: float, stepvalues: Sequence[int]) -> float:
    """``base_lr * gamma ** k`` where ``k`` is how many of the sorted ``stepvalues`` are ``<= it``.

    Like :func:`step_lr`, but the LR drops at the given iterations instead of at regular intervals.

    >>> [multistep_lr(it, base_lr=1.0, gamma=0.5, stepvalues=[10, 15]) for it in (9, 10, 14, 15, 100)]
    [1.0, 0.5, 0.5, 0.25, 0.25]
    """
    # bisect_right counts the stepvalues <= it: Caffe drops the rate *at* iteration stepvalue.
    return base_lr * gamma ** bisect.bisect_right(stepvalues, it)


def poly_lr(it: int, base_lr: float, power: float, max_iter: int) -> float:
    """``base_lr * (1 - it / max_iter) ** power``, 0 from ``max_iter`` on (power > 0).

    Caffe leaves ``it > max_iter`` undefined (a negative base); a run that goes on past
    ``max_iter`` gets 0 here, not NaN.

    >>> [poly_lr(it, base_lr=1.0, power=2.0, max_iter=4) for it in (0, 2, 4, 9)]
    [1.0, 0.25, 0.0, 0.0]
    """
    return base_lr * max(0.0, 1.0 - it / max_iter) ** power


def sigmoid_lr(it: int, base_lr: float, gamma: float, stepsize: int) -> float:
    """``base_lr / (1 + exp(-gamma * (it - stepsize)))``: an S-curve centred on ``stepsize``.

    A negative ``gamma`` decays from about ``base_lr`` to 0, a positive one rises from 0 to
    ``base_lr``; ``|gamma|`` sets how sharp the turn is. The value at ``stepsize`` is half of ``base_lr``.

    >>> sigmoid_lr(100, base_lr=1.0, gamma=-0.1, stepsize=100)
    0.5
    >>> round(sigmoid_lr(0, base_lr=1.0, gamma=-0.1, stepsize=100), 6)
    0.999955
    >>> sigmoid_lr(10**6, base_lr=1.0, gamma=-0.1, stepsize=100)  # no overflow far from the centre
    0.0
    """
    z = gamma * (it - stepsize)
    # Two algebraically equal forms, each used where its exp() cannot overflow (|z| can be huge).
    if z >= 0:
        return base_lr / (1.0 + math.exp(-z))
    e = math.exp(z)
    return base_lr * e / (1.0 + e)


def warmup_factor(it: int, warmup_iters: int, warmup_start_factor: float) -> float:
    """A multiplier rising linearly from ``warmup_start_factor`` at ``it = 0`` to 1 at ``it = warmup_iters``.

    Multiply any policy's LR by it: the policy keeps counting from 0 during the warmup.
    ``warmup_iters = 0`` is no warmup (always 1).

    >>> [warmup_factor(it, warmup_iters=4, warmup_start_factor=0.5) for it in (0, 1, 2, 4, 10)]
    [0.5, 0.625, 0.75, 1.0, 1.0]
    """
    if it >= warmup_iters:
        return 1.0
    return warmup_start_factor + (1.0 - warmup_start_factor) * it / warmup_iters


def cyclical_lr(
    it: int, base_lr: float, max_lr: float, stepsize: int, mode: str = "triangular", gamma: float = 1.0
) -> float:
    """Smith's cyclical learning rate (CLR, 2017), in the paper's closed form.

    ``cycle = floor(1 + it / (2 * stepsize))``, ``x = |it / stepsize - 2 * cycle + 1|``,
    ``lr = base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale``, where ``stepsize`` is half a
    cycle and ``scale`` is 1 (``triangular``), ``1 / 2 ** (cycle - 1)`` (``triangular2``: the
    amplitude halves every cycle) or ``gamma ** it`` (``exp_range``).
    The LR is ``base_lr`` at ``it = 0``, ``max_lr`` at ``it = stepsize``, ``base_lr`` again at ``2 * stepsize``.

    >>> [cyclical_lr(it, base_lr=1.0, max_lr=3.0, stepsize=2) for it in (0, 1, 2, 3, 4)]
    [1.0, 2.0, 3.0, 2.0, 1.0]
    >>> cyclical_lr(6, base_lr=1.0, max_lr=3.0, stepsize=2, mode="triangular2")  # 2nd peak: half the amplitude
    2.0
    >>> cyclical_lr(2, base_lr=1.0, max_lr=3.0, stepsize=2, mode="exp_range", gamma=0.5)
    1.5
    """
    cycle = math.floor(1 + it / (2 * stepsize))
    x = abs(it / stepsize - 2 * cycle + 1)
    if mode == "triangular":
        scale = 1.0
    elif mode == "triangular2":
        scale = 1.0 / 2 ** (cycle - 1)
    elif mode == "exp_range":
        scale = gamma**it
    else:
        raise ValueError(f"`mode` must be one of {CYCLICAL_MODES}, got {mode!r}.")
    return base_lr + (max_lr - base_lr) * max(0.0, 1.0 - x) * scale
