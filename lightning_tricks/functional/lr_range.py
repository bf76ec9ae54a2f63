"""Recipe 3.4: the learning-rate range test's math — the sweep, unbiased smoothing, stopping, suggestions.

Train while raising the LR (exponentially, e.g. 1e-7 → 1) and record the loss: it is flat while the
LR is too small, falls where the LR is useful, and explodes past the largest stable LR. A
*suggestion rule* turns that curve into one LR. Each rule here is a plain function
``rule(lrs, smoothed_losses) -> index`` so users can swap in their own (``SUGGESTION_RULES``).

Two details decide whether a suggestion can be trusted, and both are where Lightning's finder goes
wrong (issues #21141, #14167, #1767):

- the slope must be taken against **log LR** (the sweep is exponential: equal steps in log space);
  against linear LR the gradient is dominated by the tiny spacing at the start of the sweep;
- the curve must not be biased: an exponential moving average must be **debiased** (divided by
  ``1 - beta**(i+1)``), else its first values are pulled towards 0 and the curve seems to *rise* at the
  start — that EMA is what stops the sweep on divergence, online; and it lags, so the rules read a
  centred average of the finished curve instead (:func:`smooth_centered`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

MODES = ("exponential", "linear")


def lr_sweep(start: float, end: float, steps: int, mode: str = "exponential") -> np.ndarray:
    """The ``steps`` learning rates of the sweep, ``start`` first and ``end`` last.

    >>> lr_sweep(1e-3, 1e-1, 3).round(6).tolist()
    [0.001, 0.01, 0.1]
    >>> lr_sweep(0.0, 1.0, 5, mode="linear").tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if mode == "exponential":
        return np.geomspace(start, end, steps)
    if mode == "linear":
        return np.linspace(start, end, steps)
    raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")


def smooth(losses: Sequence[float], beta: float = 0.98) -> np.ndarray:
    """Exponential moving average of ``losses``, debiased so that the first value is the first loss.

    >>> smooth([2.0, 2.0, 2.0], beta=0.9).tolist()
    [2.0, 2.0, 2.0]
    >>> smooth([1.0, 3.0], beta=0.5).tolist()  # (0.5*0.5*1 + 0.5*3) / (1 - 0.25)
    [1.0, 2.3333333333333335]
    """
    out, average = np.empty(len(losses)), 0.0
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * float(loss)
        out[i] = average / (1 - beta ** (i + 1))
    return out


def smooth_centered(losses: Sequence[float], width: float = 0.03) -> np.ndarray:
    """The curve the suggestion rules read: a centred Gaussian average (sigma = ``width`` times the points).

    An EMA lags: with the usual beta = 0.98 over a 100-step sweep its minimum and its steepest descent
    sit tens of steps (several times in LR) after the real ones. After the sweep the whole curve is
    known, so a symmetric window gives the same noise reduction without the shift. Non-finite points
    (the explosion) are left out of the averages.

    >>> smooth_centered([1.0, 1.0, 1.0, 1.0]).tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> smooth_centered([0.0, 0.0, 3.0, 0.0, 0.0], width=0.2).round(3).tolist()  # sigma = 1 point
    [0.232, 0.771, 1.208, 0.771, 0.232]
    """
    values = np.asarray(losses, dtype=float)
    sigma = max(1.0, width * len(values))
    offsets = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    out = np.empty(len(values))
    for i in range(len(values)):
        index = i + offsets
        inside = (index >= 0) & (index < len(values))
        window, weights = values[index[inside]], kernel[inside]
        finite = np.isfinite(window)
        out[i] = np.sum(weights[finite] * window[finite]) / np.sum(weights[finite]) if finite.any() else np.inf
    return out


def has_diverged(smoothed: float, best: float, factor: float) -> bool:
    """The sweep stops once the smoothed loss exceeds ``factor`` times the best one so far (or is not finite).

    For losses that can be negative, the distance above the best is compared with ``|best|`` instead.

    >>> has_diverged(5.0, 1.0, 4.0), has_diverged(3.0, 1.0, 4.0), has_diverged(float("nan"), 1.0, 4.0)
    (True, False, True)
    """
    if not math.isfinite(smoothed):
        return True
    if best > 0:
        return smoothed > factor * best
    return smoothed - best > (factor - 1) * max(abs(best), 1e-12)


def relative_descent(smoothed: Sequence[float]) -> float:
    """How far the smoothed loss fell below its starting level, as a fraction of it (0: it never fell).

    The starting level is the mean of the first 5% of the points (at least 3): the curve where the
    LR is still too small to change anything. A sweep whose curve never falls clearly has no
    descent for a rule to find, and any LR it "suggests" is noise (a global-average-pool CNN at
    batch 16 fell by 0.6% and got 5.7e-5, at which it trained to 10% accuracy).

    >>> round(relative_descent([2.0, 2.0, 2.0, 1.5, 1.0, 3.0]), 3)
    0.5
    >>> round(relative_descent([2.0, 2.01, 1.99, 2.02, 9.0]), 4)
    0.005
    """
    values = np.asarray(smoothed, dtype=float)
    finite = values[np.isfinite(values)]
    if len(finite) < 2:
        return 0.0
    start = float(np.mean(finite[: max(3, math.ceil(0.05 * len(finite)))]))
    lowest = float(finite.min())
    return max(0.0, (start - lowest) / abs(start)) if start != 0 else 0.0


def _usable(smoothed: np.ndarray) -> int:
    """The points up to and including the minimum of the smoothed loss: past it the LR is too large."""
    finite = np.where(np.isfinite(smoothed), smoothed, np.inf)
    return int(np.argmin(finite)) + 1


def steepest(lrs: np.ndarray, smoothed: np.ndarray, skip_start: int = 5) -> int:
    """Index of the steepest descent of the smoothed loss per unit of **log** LR, before the minimum.

    >>> lrs = np.geomspace(1e-4, 1, 9)
    >>> steepest(lrs, np.array([5, 5, 4.9, 4, 2, 1.5, 1.4, 3, 9.0]), skip_start=0)
    3
    """
    end = _usable(smoothed)
    start = min(skip_start, max(end - 2, 0))
    if end - start < 2:
        return max(end - 1, 0)
    slope = np.gradient(smoothed[start:end], np.log(lrs[start:end]))
    return start + int(np.argmin(slope))


def valley(lrs: np.ndarray, smoothed: np.ndarray) -> int:
    """fastai's "valley": the longest stretch where the loss keeps falling; a point 2/3 of the way down it.

    Robust to a noisy start and to the spike at the end: the longest decreasing run (not necessarily
    contiguous, found by dynamic programming over the points up to the minimum) is where the LR is
    useful, and a point two thirds of the way along it is safely below the minimum's LR.

    >>> valley(np.geomspace(1e-4, 1, 8), np.array([5, 5.1, 4, 3, 2, 1, 2, 9.0]))
    3
    """
    end = _usable(smoothed)
    values = smoothed[:end]
    n = len(values)
    if n < 3:
        return max(n - 1, 0)
    longest = np.ones(n, dtype=int)  # length of the longest decreasing run ending at i
    previous = np.full(n, -1)
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and longest[j] + 1 > longest[i]:
                longest[i], previous[i] = longest[j] + 1, j
    last = int(np.argmax(longest))
    first = last
    while previous[first] >= 0:
        first = int(previous[first])
    return first + round((last - first) * 2 / 3)


def minimum(lrs: np.ndarray, smoothed: np.ndarray) -> int:
    """The LR of the minimum loss divided by 10 (Smith; fastai's old default): index of the nearest LR below.

    >>> minimum(np.geomspace(1e-5, 1, 11), np.array([5, 5, 5, 5, 4, 3, 2, 1, 0.5, 2, 9.0]))
    6
    """
    best = _usable(smoothed) - 1
    target = lrs[best] / 10
    below = np.nonzero(lrs <= target)[0]
    return int(below[-1]) if len(below) else 0


SuggestionRule = Callable[[np.ndarray, np.ndarray], int]

# "steepest" is the default: on the benchmark (benchmarks/bench_lr_range_test.py) it is the rule whose
# LR trains within 3% of the best LR of a grid on every case; "valley" and "minimum" are not.
SUGGESTION_RULES: dict[str, SuggestionRule] = {"steepest": steepest, "valley": valley, "minimum": minimum}


def suggest(lrs: Sequence[float], smoothed: Sequence[float], rule: str | SuggestionRule = "steepest") -> float:
    """The learning rate ``rule`` picks on the curve (``rule`` a name of ``SUGGESTION_RULES`` or a function).

    >>> lrs = np.geomspace(1e-5, 1, 11)
    >>> loss = np.array([5, 5, 5, 5, 4, 3, 2, 1, 0.5, 2, 9.0])
    >>> [f"{suggest(lrs, loss, r):.0e}" for r in ("valley", "steepest", "minimum")]
    ['3e-03', '1e-02', '1e-02']
    """
    function = resolve_rule(rule)
    lrs_array, smoothed_array = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    if len(lrs_array) == 0:
        raise ValueError("suggest: the range test recorded no losses, so there is no curve to read.")
    return float(lrs_array[function(lrs_array, smoothed_array)])


def resolve_rule(rule: str | SuggestionRule) -> SuggestionRule:
    if callable(rule):
        return rule
    if rule not in SUGGESTION_RULES:
        raise ValueError(f"`suggestion` must be one of {sorted(SUGGESTION_RULES)} or a function, got {rule!r}.")
    return SUGGESTION_RULES[rule]


def rule_name(rule: str | SuggestionRule) -> str:
    """The name a result and a checkpoint key give ``rule``: its own name, or a function's ``__name__``.

    >>> rule_name("valley"), rule_name(minimum)
    ('valley', 'minimum')
    """
    return rule if isinstance(rule, str) else getattr(rule, "__name__", "custom")
