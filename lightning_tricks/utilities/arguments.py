"""Checks of constructor arguments: every bad value fails at construction with the same clear sentence."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

#: The tasks a model can have (what its loss and targets mean); see lightning_tricks.utilities.protocol.
TASKS = ("multiclass", "binary", "multilabel", "regression")


class UsageError(ValueError):
    """A mistake the user can fix in what they asked a command for: a value, a search space, a checkpoint.

    The message names the argument, the value and what is allowed. A ``lightning-tricks`` command
    prints it as one line and exits with code 2 (:mod:`lightning_tricks.commands.usage_errors`); any
    other exception is a bug and keeps its traceback. A ``ValueError``, so callers that catch those
    still do.
    """


def check_int(value: Any, name: str, minimum: int = 1, owner: str = "", allow_none: bool = False) -> int | None:
    """``value`` if it is an integer ``>= minimum`` (or None when allowed), else a ``ValueError`` naming it.

    >>> check_int(3, "steps")
    3
    >>> check_int(0, "steps", owner="Check")
    Traceback (most recent call last):
    ...
    ValueError: Check: `steps` must be an integer >= 1, got 0.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        prefix = f"{owner}: " if owner else ""
        allowed = f"None or an integer >= {minimum}" if allow_none else f"an integer >= {minimum}"
        raise ValueError(f"{prefix}`{name}` must be {allowed}, got {value!r}.")
    return value


def check_float(
    value: Any,
    name: str,
    allowed: str = "a finite number",
    ok: Callable[[float], bool] = lambda v: True,
    owner: str = "",
) -> float:
    """``value`` as a float if it is a finite real number with ``ok(value)``, else a ``ValueError`` naming it.

    ``allowed`` says in words what ``ok`` accepts, for the message.

    >>> check_float(0.5, "gamma", "a number in (0, 1]", lambda g: 0 < g <= 1)
    0.5
    >>> check_float(float("nan"), "lr", "a finite number > 0", lambda v: v > 0, owner="Sweep")
    Traceback (most recent call last):
    ...
    ValueError: Sweep: `lr` must be a finite number > 0, got nan.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}`{name}` must be {allowed}, got {value!r}.")
    return float(value)


def check_task(task: str, argument: str = "task", allow_auto: bool = False) -> str:
    """Return ``task`` if it is a known task name, else raise a ``ValueError`` naming the argument.

    >>> check_task("binary")
    'binary'
    """
    allowed = (*TASKS, "auto") if allow_auto else TASKS
    if not isinstance(task, str) or task not in allowed:
        raise ValueError(f"`{argument}` must be one of {', '.join(map(repr, allowed))}, got {task!r}.")
    return task
