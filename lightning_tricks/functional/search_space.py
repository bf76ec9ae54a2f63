"""Search spaces written in YAML: parse and check them, sample them, grid them, print them as overrides.

A search space maps config keys (any key of the ``train`` config, dotted) to a spec::

    model.optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    model.dropout:      {type: float, low: 0.0, high: 0.5}
    data.batch_size:    {type: categorical, choices: [32, 64, 128]}
    model.hidden_sizes: {type: categorical, choices: [[64], [128, 64]]}
    +model.optimizer.momentum: {type: float, low: 0.8, high: 0.99}   # "+": a key the config lacks

``float`` and ``int`` take ``low``, ``high``, optional ``log`` or ``step``, and an optional ``grid``
(the values the grid sampler tries; without it the grid has ``n_grid`` points, log-spaced when
``log``). ``categorical`` takes ``choices``; a choice may be a list or mapping, which Optuna stores as
its YAML text. Everything here is pure: no Trainer, no study.

>>> space = parse_search_space({"model.optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
>>> grid_space(space, n_grid=3)
{'model.optimizer.lr': [0.0001, 0.001, 0.01]}
>>> to_overrides(space, {"model.optimizer.lr": 0.001})
['model.optimizer.lr=0.001']
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lightning_tricks.utilities.arguments import UsageError

TYPES = ("float", "int", "categorical")
_KEYS = {
    "float": {"type", "low", "high", "log", "step", "grid"},
    "int": {"type", "low", "high", "log", "step", "grid"},
    "categorical": {"type", "choices"},
}
_PRIMITIVE = (str, int, float, bool, type(None))
_KEY = re.compile(r"^\+?[A-Za-z_][\w\-]*(\.[A-Za-z_@][\w\-@]*)*$")


class SearchSpaceError(UsageError):
    """A search-space entry that cannot be sampled; the message names the key."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched config key and how to sample it."""

    key: str  #: dotted config key, without the leading "+"
    type: str  #: "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    grid: tuple[Any, ...] | None = None
    add: bool = False  #: the key is new to the config ("+key=value")
    #: Optuna's own (primitive) form of each choice -> the value the config gets
    encoded: dict[Any, Any] = field(default_factory=dict, compare=False)

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution this spec samples from."""
        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return CategoricalDistribution(list(self.encoded))

    def decode(self, sampled: Any) -> Any:
        """The config value for what Optuna sampled (categorical choices may be lists or mappings)."""
        if self.type == "categorical":
            return self.encoded[sampled]
        return int(sampled) if self.type == "int" else float(sampled)


def _encode_choice(choice: Any) -> Any:
    if isinstance(choice, _PRIMITIVE):
        return choice
    return yaml.safe_dump(choice, default_flow_style=True, width=10**6).strip()


def _number(key: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SearchSpaceError(f"search space `{key}`: `{name}` must be a number, got {value!r}.")
    try:
        number = float(value)
    except ValueError:
        raise SearchSpaceError(f"search space `{key}`: `{name}` must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise SearchSpaceError(f"search space `{key}`: `{name}` must be finite, got {value!r}.")
    return number


def parse_param(key: str, spec: Any) -> ParamSpec:
    """Check one ``key: spec`` entry; raise :class:`SearchSpaceError` naming the key and the problem."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise SearchSpaceError(f"search space key {key!r} is not a dotted config key like `model.optimizer.lr`.")
    add, name = key.startswith("+"), key.lstrip("+")
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(
            f"search space `{key}`: expected a mapping like {{type: float, low: ..., high: ...}}, got {spec!r}."
        )
    kind = spec.get("type")
    if kind not in TYPES:
        raise SearchSpaceError(f"search space `{key}`: `type` must be one of {list(TYPES)}, got {kind!r}.")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise SearchSpaceError(
            f"search space `{key}`: unknown field(s) {unknown} for type {kind}; allowed: {sorted(_KEYS[kind])}."
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or len(choices) == 0:
            raise SearchSpaceError(f"search space `{key}`: `choices` must be a non-empty list, got {choices!r}.")
        choices = tuple(_plain(c) for c in choices)
        encoded = {_encode_choice(c): c for c in choices}
        if len(encoded) != len(choices):
            raise SearchSpaceError(f"search space `{key}`: `choices` has duplicates: {list(choices)!r}.")
        return ParamSpec(key=name, type=kind, choices=choices, add=add, encoded=encoded)

    for required in ("low", "high"):
        if spec.get(required) is None:
            raise SearchSpaceError(f"search space `{key}`: type {kind} needs `{required}`.")
    low, high = _number(key, "low", spec["low"]), _number(key, "high", spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"search space `{key}`: `log` must be true or false, got {log!r}.")
    step = spec.get("step")
    if step is not None:
        step = _number(key, "step", step)
        if step <= 0:
            raise SearchSpaceError(f"search space `{key}`: `step` must be > 0, got {step!r}.")
        if log:
            raise SearchSpaceError(f"search space `{key}`: `step` and `log: true` cannot be combined.")
    if kind == "int":
        for name_, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and value != int(value):
                raise SearchSpaceError(f"search space `{key}`: `{name_}` must be an integer, got {value!r}.")
    if low > high:
        raise SearchSpaceError(f"search space `{key}`: `low` ({low!r}) must not exceed `high` ({high!r}).")
    if log and low <= 0:
        raise SearchSpaceError(
            f"search space `{key}`: `log: true` needs `low` > 0, got {low!r} (a log scale never reaches 0)."
        )
    grid = spec.get("grid")
    if grid is not None:
        if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) == 0:
            raise SearchSpaceError(f"search space `{key}`: `grid` must be a non-empty list, got {grid!r}.")
        grid = tuple(_number(key, "grid", g) for g in grid)
        outside = [g for g in grid if not low <= g <= high]
        if outside:
            raise SearchSpaceError(f"search space `{key}`: `grid` values {outside} lie outside [{low}, {high}].")
        grid = tuple(int(g) for g in grid) if kind == "int" else grid
    if kind == "int":
        low, high, step = int(low), int(high), None if step is None else int(step)
    return ParamSpec(key=name, type=kind, low=low, high=high, log=log, step=step, grid=grid, add=add)


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain lists and dicts (for hashing, YAML text and the config)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def parse_search_space(params: Mapping[str, Any] | None) -> list[ParamSpec]:
    """Every entry of a ``params:`` mapping, checked; at least one is required.

    >>> parse_search_space({"model.dropout": {"type": "float", "low": 0.5, "high": 0.1}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_tricks.functional.search_space.SearchSpaceError: search space `model.dropout`: `low` (0.5) ...
    """
    if not params:
        raise SearchSpaceError("the search space is empty: give `hparams_search.params` at least one key.")
    if not isinstance(params, Mapping):
        raise SearchSpaceError(f"`hparams_search.params` must map config keys to specs, got {params!r}.")
    specs = [parse_param(str(key), _plain(spec)) for key, spec in params.items()]
    keys = [s.key for s in specs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise SearchSpaceError(f"search space lists {duplicated} twice (once with '+').")
    return specs


def value_from_unit(spec: ParamSpec, u: float) -> Any:
    """The value at quantile ``u`` in [0, 1) of the spec's sampling distribution (uniform, log-uniform).

    Used to sample with one seeded generator per trial and to reason about coverage in tests.

    >>> spec = parse_param("lr", {"type": "float", "low": 1e-4, "high": 1e-2, "log": True})
    >>> round(value_from_unit(spec, 0.5), 6)
    0.001
    """
    if spec.type == "categorical":
        return list(spec.encoded)[min(int(u * len(spec.encoded)), len(spec.encoded) - 1)]
    low, high = float(spec.low), float(spec.high)
    if spec.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    if spec.type == "int":
        if spec.log:  # each integer gets the log-width of [k - 0.5, k + 0.5], as Optuna's samplers do
            lo, hi = math.log(low - 0.5), math.log(high + 0.5)
            value = round(math.exp(lo + u * (hi - lo)))
        else:
            step = spec.step or 1
            n = (int(high) - int(low)) // step
            value = int(low) + step * min(int(u * (n + 1)), n)
        return int(min(max(value, low), high))
    if spec.step is not None:
        n = math.floor((high - low) / spec.step + 1e-9)
        value = low + spec.step * min(int(u * (n + 1)), n)
    return float(min(max(value, low), high))


def grid_values(spec: ParamSpec, n_grid: int) -> list[Any]:
    """The values the grid sampler tries for one key: ``grid``, the choices, or ``n_grid`` points.

    >>> grid_values(parse_param("b", {"type": "int", "low": 16, "high": 256, "log": True}), 5)
    [16, 32, 64, 128, 256]
    """
    if spec.type == "categorical":
        return list(spec.encoded)
    if spec.grid is not None:
        return list(spec.grid)
    if n_grid < 1:
        raise SearchSpaceError(f"the grid needs at least one point per key, got n_grid={n_grid}.")
    if n_grid == 1 or spec.low == spec.high:
        points = np.array([spec.low if spec.low == spec.high else (spec.low + spec.high) / 2])
    elif spec.log:
        points = np.geomspace(spec.low, spec.high, n_grid)
    else:
        points = np.linspace(spec.low, spec.high, n_grid)
    if spec.step is not None:
        points = spec.low + np.round((points - spec.low) / spec.step) * spec.step
    if spec.type == "int":
        return sorted({int(np.rint(p)) for p in points})
    return [float(f"{p:.6g}") for p in points]


def grid_space(specs: Iterable[ParamSpec], n_grid: int) -> dict[str, list[Any]]:
    """``{key: values}`` for :class:`optuna.samplers.GridSampler`."""
    return {spec.key: grid_values(spec, n_grid) for spec in specs}


def grid_size(grid: Mapping[str, Sequence[Any]]) -> int:
    """Number of points of a grid (the product of the per-key counts)."""
    return math.prod(len(values) for values in grid.values())


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged.

    >>> [format_value(v) for v in (3e-4, 64, True, None, "torch.optim.AdamW", [128, 64], "a b")]
    ['0.0003', '64', 'true', 'null', 'torch.optim.AdamW', '[128,64]', "'a b'"]
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][\w.\-/:]*", text) and text not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_overrides(specs: Iterable[ParamSpec], values: Mapping[str, Any]) -> list[str]:
    """Hydra command-line overrides (``key=value``, ``+key=value`` for new keys) for the values."""
    return [f"{'+' if s.add else ''}{s.key}={format_value(values[s.key])}" for s in specs if s.key in values]


def parse_fixed(fixed: Mapping[str, Any] | None) -> list[ParamSpec]:
    """``fixed:`` entries (``key: value``, set on every trial) as one-choice categorical specs."""
    specs = []
    for key, value in (fixed or {}).items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise SearchSpaceError(f"`hparams_search.fixed` key {key!r} is not a dotted config key.")
        value = _plain(value)
        specs.append(
            ParamSpec(
                key=key.lstrip("+"),
                type="categorical",
                choices=(value,),
                add=key.startswith("+"),
                encoded={_encode_choice(value): value},
            )
        )
    return specs


def suggest(trial: Any, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """Ask an Optuna trial for a value of every key; return ``{key: config value}``.

    Works with a live :class:`optuna.Trial` and with :class:`optuna.trial.FixedTrial`.
    """
    values = {}
    for s in specs:
        if s.type == "float":
            raw = trial.suggest_float(s.key, s.low, s.high, log=s.log, step=s.step)
        elif s.type == "int":
            raw = trial.suggest_int(s.key, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        else:
            raw = trial.suggest_categorical(s.key, list(s.encoded))
        values[s.key] = s.decode(raw)
    return values
