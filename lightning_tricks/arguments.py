"""Checks of constructor arguments: every bad value fails at construction with the same clear sentence."""

from __future__ import annotations

from typing import Any


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
