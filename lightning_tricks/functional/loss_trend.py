"""Where a loss curve is heading: the checks' evidence for "still improving" versus "stuck".

A check that stops after a fixed budget sees three kinds of curve: one that reached its target,
one that is still falling steadily (the budget was too small: *inconclusive*), and one that has
flattened or turned up (*evidence* of a problem). These functions tell the last two apart from the
tail of the curve, and estimate how many more steps the current trend needs.

>>> curve = [2.0 * 0.99**i for i in range(100)]  # falling 1% per step
>>> round(tail_slope(curve, log=True), 4)  # log(0.99) per step
-0.0101
>>> round(steps_to_reach(curve, 0.5))  # 2 * 0.99**99 = 0.74 now; 0.5 is 39 more steps away
39
>>> steps_to_reach([1.0] * 50, 0.5)  # flat: never
inf
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["HORIZON", "mean_shift", "round_steps", "steps_to_reach", "tail_slope"]

#: How far a check extrapolates a still-improving curve, in budgets: a trend that needs more than this
#: many times the steps it had is too slow to tell from a plateau (a softmax before CrossEntropyLoss
#: creeps towards its floor for ever), so the curve counts as stuck, not as a budget too small.
HORIZON = 10


def tail_slope(values: Sequence[float], tail: float = 0.25, log: bool = False, spacing: float = 1.0) -> float:
    """Least-squares slope per step of the last ``tail`` fraction of ``values`` (of their log with ``log``).

    ``spacing`` is the number of steps between two values (a curve scored every 10 steps: 10). A
    least-squares fit over the tail, not the last two points: a noisy curve's last step says little.
    Needs at least 3 finite values in the tail (else NaN); with ``log``, values must be positive.
    """
    n = len(values)
    start = min(max(0, n - max(3, math.ceil(tail * n))), n)
    ys = [math.log(v) if log else v for v in values[start:] if math.isfinite(v) and (v > 0 or not log)]
    if len(ys) < 3:
        return math.nan
    xs = [i * spacing for i in range(len(ys))]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx


def steps_to_reach(
    values: Sequence[float], target: float, tail: float = 0.25, log: bool = True, spacing: float = 1.0
) -> float:
    """More steps the tail's trend needs to bring the last value down to ``target`` (inf if it is not falling).

    ``log=True`` extrapolates geometrically (a loss falling by a fixed fraction per step), which
    suits a loss going to zero; ``log=False`` linearly, for a difference of two losses. 0 when the
    last value is already at or below the target.
    """
    last = values[-1] if values else math.nan
    if not math.isfinite(last):
        return math.inf
    if last <= target:
        return 0.0
    if log and target <= 0:
        return math.inf
    slope = tail_slope(values, tail, log, spacing)
    if not slope < 0:  # flat, rising, or too short to say
        return math.inf
    gap = (math.log(target) - math.log(last)) if log else target - last
    return gap / slope


def mean_shift(first: Sequence[float], last: Sequence[float], paired: bool = False) -> tuple[float, float]:
    """``(mean(first) - mean(last), its standard error)``: is a drop bigger than the noise of the values?

    Positive when ``last`` is lower. Unpaired, the standard error is Welch's, from each group's spread;
    ``paired`` (the i-th values of both measured on the same batch) uses the spread of the
    differences, which removes the batch-to-batch noise both share. A change of more than ~3
    standard errors is unlikely to be noise in a curve of minibatch losses.

    >>> drop, se = mean_shift([2.3, 2.2, 2.4, 2.3], [2.29, 2.19, 2.39, 2.29])
    >>> round(drop, 3), drop > 3 * se  # unpaired: within the batches' spread
    (0.01, False)
    >>> drop, se = mean_shift([2.3, 2.2, 2.4, 2.3], [2.29, 2.19, 2.39, 2.29], paired=True)
    >>> drop > 3 * se  # paired: every batch dropped
    True
    """

    def mean_var(xs: Sequence[float]) -> tuple[float, float]:
        mean = sum(xs) / len(xs)
        return mean, (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0)

    if paired:
        mean, var = mean_var([a - b for a, b in zip(first, last, strict=True)])
        return mean, math.sqrt(var / len(first))
    (m1, v1), (m2, v2) = mean_var(first), mean_var(last)
    return m1 - m2, math.sqrt(v1 / len(first) + v2 / len(last))


def round_steps(steps: float) -> int:
    """A step budget to suggest: rounded up to 1, 2 or 5 times a power of ten.

    >>> [round_steps(s) for s in (7, 450, 1234, 5000)]
    [10, 500, 2000, 5000]
    """
    steps = max(1.0, float(steps))
    power = 10 ** math.floor(math.log10(steps))
    return int(next(m * power for m in (1, 2, 5, 10) if m * power >= steps))
