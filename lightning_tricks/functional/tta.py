"""Test-time augmentation (recipe 6) as pure functions: views, averaged predictions, exact totals.

A *view* is a fixed, deterministic transform of an input batch, written in configs as a short spec:

* ``"identity"`` — the input as is;
* ``"hflip"`` — mirrored along the last dimension;
* ``"shift:dy,dx"`` (images) or ``"shift:d"`` (signals) — moved by whole pixels/samples, edges repeated;
* ``"rotate:degrees"`` — images rotated about their centre, edges repeated;

or the same as a one-key mapping (``{"shift": [1, 0]}``, ``{"rotate": 10}``), or (from Python) any
callable ``x -> x``. The transforms are :mod:`lightning_tricks.functional.augment`'s.

Predictions are averaged as *probabilities* (softmax for multiclass, sigmoid for binary/multilabel,
the plain mean for regression), and handed back in the model's own output space ("TTA logits": the
log of the mean probability, or its log-odds) so the model's own loss and decision rule apply to
them unchanged. The averaging runs in log space (``logsumexp``), so no probability underflows to 0
and one view gives back its outputs exactly.

>>> [v.name for v in parse_views(["shift:1,0", "hflip"])]
['identity', 'shift:1,0', 'hflip']
>>> combine_outputs([torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 100.0]])], "multiclass").exp()
tensor([[0.2500, 0.7500]])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lightning_tricks.functional.augment import hflip, rotate, shift
from lightning_tricks.functional.sample_losses import correct_predictions
from lightning_tricks.utilities.arguments import check_task

VIEW_KINDS = ("identity", "hflip", "shift", "rotate")
_ALLOWED = (
    "'identity', 'hflip', 'shift:dy,dx' (or 'shift:d' for signals), 'rotate:degrees', "
    "a one-key mapping such as {shift: [1, 0]}, or a callable x -> x"
)


@dataclass(frozen=True)
class View:
    """One deterministic view of a batch: its display name and the transform."""

    name: str
    transform: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _bad(spec: Any, why: str, argument: str, owner: str) -> ValueError:
    prefix = f"{owner}: " if owner else ""
    return ValueError(f"{prefix}`{argument}` has an invalid view {spec!r} ({why}); allowed: {_ALLOWED}.")


def _numbers(value: Any, spec: Any, argument: str, owner: str) -> list[float]:
    """The numbers of a view's argument: ``"1,0"``, ``[1, 0]`` or ``1``."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        parts = [value]
    try:
        numbers = [float(p) for p in parts if not isinstance(p, bool)]
    except (TypeError, ValueError):
        raise _bad(spec, f"{value!r} is not a list of numbers", argument, owner) from None
    if not numbers or len(numbers) != len(parts) or not all(math.isfinite(n) for n in numbers):
        raise _bad(spec, f"{value!r} is not a list of numbers", argument, owner)
    return numbers


def parse_view(spec: Any, argument: str = "views", owner: str = "") -> View:
    """A :class:`View` from a spec (see the module docstring); a ``ValueError`` naming ``argument`` if malformed.

    A shift by zero or a rotation by 0 degrees is the identity and is named so.

    >>> parse_view("shift: 0, -1").name
    'shift:0,-1'
    >>> parse_view({"rotate": 0}).name
    'identity'
    """
    if isinstance(spec, View):
        return spec
    if callable(spec) and not isinstance(spec, (str, Mapping)):
        return View(getattr(spec, "__name__", type(spec).__name__), spec)
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise _bad(dict(spec), "a mapping view needs exactly one key", argument, owner)
        ((kind, value),) = spec.items()
    elif isinstance(spec, str):
        kind, _, value = spec.partition(":")
        value = value if value.strip() else None
    else:
        raise _bad(spec, f"a {type(spec).__name__} is not a view", argument, owner)
    kind = str(kind).strip().lower()
    if kind not in VIEW_KINDS:
        raise _bad(spec, f"unknown kind {kind!r}, expected one of {VIEW_KINDS}", argument, owner)
    if kind in ("identity", "hflip"):
        if value not in (None, True):
            raise _bad(spec, f"{kind!r} takes no argument", argument, owner)
        return View(kind, _identity if kind == "identity" else hflip)
    if value is None:
        raise _bad(spec, f"{kind!r} needs an argument, e.g. 'shift:1,0' or 'rotate:10'", argument, owner)
    numbers = _numbers(value, spec, argument, owner)
    if kind == "shift":
        if len(numbers) not in (1, 2) or any(n != int(n) for n in numbers):
            raise _bad(spec, "a shift is 1 (signals) or 2 (images) whole numbers", argument, owner)
        offsets = tuple(int(n) for n in numbers)
        if not any(offsets):
            return View("identity", _identity)
        return View("shift:" + ",".join(map(str, offsets)), lambda x: shift(x, offsets))
    if len(numbers) != 1:
        raise _bad(spec, "a rotation is one angle in degrees", argument, owner)
    degrees = numbers[0]
    if degrees == 0:
        return View("identity", _identity)
    return View(f"rotate:{degrees:g}", lambda x: rotate(x, degrees))


def parse_views(specs: Any, argument: str = "views", owner: str = "") -> list[View]:
    """Views from a list of specs, identity first (added when missing); duplicates are an error.

    The identity always takes part: it is the no-TTA baseline, and a test-time average that leaves
    the input itself out is rarely meant. A view listed twice would silently count double.
    """
    if isinstance(specs, (str, Mapping)) or callable(specs):
        specs = [specs]
    if not isinstance(specs, Sequence) or not len(specs):
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}`{argument}` must be a non-empty list of views ({_ALLOWED}), got {specs!r}.")
    views = [parse_view(s, argument, owner) for s in specs]
    names = [v.name for v in views]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}`{argument}` lists the same view twice: {duplicates} (in {list(specs)!r}).")
    if "identity" not in names:
        views.insert(0, View("identity", _identity))
    else:
        views.insert(0, views.pop(names.index("identity")))
    return views


def log_mean_exp(log_values: torch.Tensor) -> torch.Tensor:
    """``log(mean_k exp(v_k))`` over dim 0, elementwise and stable: the log of a mean probability.

    Shared by TTA (over views) and ensembles (over members), so a confident view or member whose
    other probabilities underflow to 0 cannot zero the average.
    """
    return torch.logsumexp(log_values, dim=0) - math.log(len(log_values))


def combine_outputs(outputs: Sequence[torch.Tensor], task: str) -> torch.Tensor:
    """The views' outputs averaged as probabilities, in the model's output space ("TTA logits").

    multiclass: ``log(mean softmax)`` (log-probabilities are logits); binary/multilabel: the log-odds
    of the mean sigmoid; regression: the mean. One output is returned as is.
    """
    check_task(task)
    outputs = list(outputs)
    if not outputs:
        raise ValueError("combine_outputs: no outputs to combine.")
    if len(outputs) == 1:
        return outputs[0]
    if task == "regression":
        return torch.stack(outputs).mean(0)
    wide = [o.double() for o in outputs]  # exact-ish averaging; the result goes back to the model's dtype
    if task == "multiclass":
        combined = log_mean_exp(F.log_softmax(torch.stack(wide), dim=-1))
    else:
        stacked = torch.stack(wide)
        combined = log_mean_exp(F.logsigmoid(stacked)) - log_mean_exp(F.logsigmoid(-stacked))
    return combined.to(outputs[0].dtype)


def to_probabilities(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """Probabilities (multiclass: softmax; binary/multilabel: sigmoid) or, for regression, the outputs."""
    check_task(task)
    if task == "multiclass":
        return outputs.softmax(-1)
    if task in ("binary", "multilabel"):
        return outputs.sigmoid()
    return outputs


def mean_probabilities(outputs: Sequence[torch.Tensor], task: str) -> torch.Tensor:
    """The plain mean over views of :func:`to_probabilities` (equal to ``to_probabilities(combine_outputs)``).

    >>> mean_probabilities([torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 100.0]])], "multiclass")
    tensor([[0.2500, 0.7500]])
    """
    return torch.stack([to_probabilities(o, task) for o in outputs]).mean(0)


def metric_name(task: str) -> str:
    """``"acc"`` for classification, ``"mae"`` (mean absolute error) for regression."""
    return "mae" if check_task(task) == "regression" else "acc"


def metric_sum(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Sum over the batch of the per-sample metric: right predictions, or absolute errors for regression.

    Right is :func:`~lightning_tricks.functional.sample_losses.correct_predictions`, as in ``FullDatasetLoss``.
    A regression sample's error is the mean absolute error over its outputs.
    """
    correct = correct_predictions(task, outputs, targets)
    if correct is not None:
        return float(correct)
    if outputs.numel() != targets.numel():
        raise ValueError(f"metric_sum: outputs {tuple(outputs.shape)} do not match targets {tuple(targets.shape)}.")
    errors = (outputs.reshape(targets.shape).double() - targets.double()).abs()
    return float(errors.reshape(len(targets), -1).mean(-1).sum())


def batch_totals(
    outputs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    task: str,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Float64 ``(K + 1, 3)`` totals of one batch: rows are the K views then TTA; columns are
    ``loss x batch size``, the :func:`metric_sum`, and the batch size.

    ``loss_fn`` returns the batch *mean* (the usual reduction), so summing ``mean x size`` over
    batches gives the sum of per-sample losses; sums from several batches (or ranks) are added, and
    :class:`TTAResult` divides once at the end.
    """
    n = len(targets)
    rows = [*outputs, combine_outputs(outputs, task)]
    totals = torch.zeros(len(rows), 3, dtype=torch.float64)
    for i, out in enumerate(rows):
        totals[i, 0] = float(loss_fn(out, targets)) * n
        totals[i, 1] = metric_sum(task, out, targets)
        totals[i, 2] = n
    return totals


@dataclass(frozen=True)
class TTAResult:
    """Exact means over a whole data set, for every view alone and for their average (TTA).

    ``loss``/``metric`` are the TTA numbers; ``loss_no_tta``/``metric_no_tta`` the identity view's,
    i.e. the model as evaluated without test-time augmentation.
    """

    views: tuple[str, ...]
    view_losses: tuple[float, ...]
    view_metrics: tuple[float, ...]
    loss: float
    metric: float
    count: int
    metric_name: str

    @property
    def loss_no_tta(self) -> float:
        return self.view_losses[0]

    @property
    def metric_no_tta(self) -> float:
        return self.view_metrics[0]

    @classmethod
    def from_totals(cls, totals: torch.Tensor, views: Sequence[str], task: str) -> TTAResult | None:
        """The means from summed :func:`batch_totals` (None for an empty set)."""
        totals = totals.double().cpu()
        count = float(totals[0, 2])
        if count == 0:
            return None
        means = totals[:, :2] / count
        return cls(
            views=tuple(views),
            view_losses=tuple(float(v) for v in means[:-1, 0]),
            view_metrics=tuple(float(v) for v in means[:-1, 1]),
            loss=float(means[-1, 0]),
            metric=float(means[-1, 1]),
            count=int(count),
            metric_name=metric_name(task),
        )

    def rows(self) -> list[list[Any]]:
        """Table rows ``[view, metric, loss]``: every view, then ``"TTA mean"``."""
        named = zip(self.views, self.view_metrics, self.view_losses, strict=True)
        return [[view, metric, loss] for view, metric, loss in named] + [["TTA mean", self.metric, self.loss]]
