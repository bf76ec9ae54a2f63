"""How a callback meets a user's model.

Every trick needs some of four things from a ``LightningModule``:

1. **inputs and targets** of a batch — a batch is ``(inputs, targets, ...)``
   (tuple or list) or a dict with an input key (``inputs``, ``x``, ``image``,
   ...) and a target key (``targets``, ``y``, ``label``, ...); the inputs are
   what ``pl_module(inputs)`` takes;
2. **the loss** — ``compute_loss(outputs, targets)`` on the module, else a
   callable ``criterion`` or ``loss_fn`` attribute;
3. **the output layer** — an ``output_layer`` module attribute, the layer named
   by ``output_layer_name``, else the last layer with parameters, which must
   be an ``nn.Linear``;
4. **the task** — ``multiclass``, ``binary``, ``multilabel`` or
   ``regression``: a ``task`` attribute, else inferred from the loss.

A plain module that follows these conventions needs nothing more.
:class:`TrickModule` documents the protocol as a mixin with the defaults, and
every callback takes overrides (``split_batch=``, ``loss_fn=``,
``output_layer=``, ``task=``) gathered in a :class:`ModelAdapter`, so any
other model is adapted without subclassing. What cannot be adapted raises
:class:`AdapterError` naming the method or argument to provide.

>>> import torch
>>> from torch import nn
>>> split_batch({"image": torch.zeros(2, 3), "label": torch.tensor([0, 1])})[1]
tensor([0, 1])
>>> find_output_layer(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4)))[0]
'2'
>>> infer_task(nn.Module(), loss_fn=nn.CrossEntropyLoss())
'multiclass'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_tricks.utilities.arguments import TASKS, check_task

#: Dict keys tried, in order, for the inputs and the targets of a dict batch.
INPUT_KEYS = ("inputs", "input", "x", "image", "images", "features", "input_ids", "data")
TARGET_KEYS = ("targets", "target", "y", "label", "labels")

_PROTOCOL_HINT = "See lightning_tricks.utilities.protocol (or mix in lightning_tricks.TrickModule) for the conventions."

# Loss -> task, for modules and for the functional forms users put in `loss_fn`.
_CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
_BCE_LOSSES = (nn.BCEWithLogitsLoss, nn.BCELoss, nn.MultiLabelSoftMarginLoss)
_REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.GaussianNLLLoss)
_FUNCTIONAL_TASKS = {
    F.cross_entropy: "multiclass",
    F.nll_loss: "multiclass",
    F.binary_cross_entropy_with_logits: "bce",
    F.binary_cross_entropy: "bce",
    F.mse_loss: "regression",
    F.l1_loss: "regression",
    F.smooth_l1_loss: "regression",
    F.huber_loss: "regression",
}


class AdapterError(TypeError):
    """A callback could not find what it needs on a model; the message says what to provide."""


def split_maybe_unlabelled(batch: Any, split: Callable[[Any], tuple[Any, Any]] | None = None) -> tuple[Any, Any]:
    """:func:`split_batch`, plus unlabelled data: a bare tensor or a 1-tuple is inputs without targets (None).

    >>> split_maybe_unlabelled((torch.ones(2),), None)
    (tensor([1., 1.]), None)
    """
    if split is None and isinstance(batch, torch.Tensor):
        return batch, None
    if split is None and isinstance(batch, (tuple, list)) and len(batch) == 1:
        return batch[0], None
    return split_batch(batch, None, split)


def default_split_batch(batch: Any) -> tuple[Any, Any]:
    """Split a batch following the convention: ``(inputs, targets, ...)`` or a dict."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        inputs = next((k for k in INPUT_KEYS if k in batch), None)
        targets = next((k for k in TARGET_KEYS if k in batch), None)
        if inputs is not None and targets is not None:
            return batch[inputs], batch[targets]
        raise AdapterError(
            f"Cannot split a dict batch with keys {sorted(batch)}: expected an input key among {INPUT_KEYS} "
            f"and a target key among {TARGET_KEYS}. Define `split_batch(self, batch) -> (inputs, targets)` "
            f"on your LightningModule or pass `split_batch=` to the callback. {_PROTOCOL_HINT}"
        )
    raise AdapterError(
        f"Cannot split a batch of type {type(batch).__name__} into (inputs, targets): expected a tuple/list "
        f"of at least 2 or a dict. Define `split_batch(self, batch) -> (inputs, targets)` on your "
        f"LightningModule or pass `split_batch=` to the callback. {_PROTOCOL_HINT}"
    )


def split_batch(
    batch: Any, module: nn.Module | None = None, split: Callable[[Any], tuple[Any, Any]] | None = None
) -> tuple[Any, Any]:
    """``(inputs, targets)`` of ``batch``: the explicit ``split``, else ``module.split_batch``, else the convention."""
    fn = split or getattr(module, "split_batch", None) or default_split_batch
    parts = fn(batch)
    if not (isinstance(parts, (tuple, list)) and len(parts) == 2):
        raise AdapterError(f"`split_batch` must return (inputs, targets); {fn!r} returned {type(parts).__name__}.")
    return parts[0], parts[1]


def loss_function(module: nn.Module, loss_fn: Callable[..., torch.Tensor] | None = None) -> Callable[..., Any]:
    """The callable ``(outputs, targets) -> loss`` of a module.

    Order: the explicit ``loss_fn``, the module's ``compute_loss`` method, its
    ``criterion`` attribute, its ``loss_fn`` attribute.
    """
    if loss_fn is not None:
        if not callable(loss_fn):
            raise AdapterError(f"`loss_fn` must be callable as loss_fn(outputs, targets), got {loss_fn!r}.")
        return loss_fn
    for name in ("compute_loss", "criterion", "loss_fn"):
        candidate = getattr(module, name, None)
        if callable(candidate):
            return candidate
    raise AdapterError(
        f"Cannot find the loss of {type(module).__name__}: define `compute_loss(self, outputs, targets)`, "
        f"or set a `criterion` (e.g. nn.CrossEntropyLoss()) or `loss_fn` attribute, or pass `loss_fn=` to "
        f"the callback. {_PROTOCOL_HINT}"
    )


def _criterion_of(module: nn.Module | None, loss_fn: Callable[..., Any] | None) -> Any:
    """The loss object whose type says the task: explicit, else ``criterion``/``loss_fn`` attributes."""
    if loss_fn is not None:
        return loss_fn
    for name in ("criterion", "loss_fn"):
        candidate = getattr(module, name, None)
        if callable(candidate):
            return candidate
    return None


def find_output_layer(module: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """``(name, layer)`` of the module's output layer.

    Order: the explicit ``name``; an ``output_layer`` attribute that is a module;
    the layer named by an ``output_layer_name`` attribute; else the last layer
    (in registration order) that holds parameters, which must be an
    ``nn.Linear`` — we refuse to guess when it is anything else, because
    picking an earlier Linear would silently set up the wrong layer.
    """
    name = name or getattr(module, "output_layer_name", None)
    if name is None:
        attr = getattr(module, "output_layer", None)
        if isinstance(attr, nn.Module):
            name = next((n for n, m in module.named_modules() if m is attr), None)
            return name or "output_layer", attr
    if name is not None:
        try:
            return name, module.get_submodule(name)
        except AttributeError as err:
            layers = [n for n, m in module.named_modules() if n and next(m.parameters(False), None) is not None]
            raise AdapterError(
                f"`output_layer={name!r}` is not a submodule of {type(module).__name__}; layers with "
                f"parameters are: {layers}."
            ) from err
    last: tuple[str, nn.Module] | None = None
    for layer_name, layer in module.named_modules():
        if next(layer.parameters(recurse=False), None) is not None:
            last = (layer_name, layer)
    if last is None:
        raise AdapterError(f"{type(module).__name__} has no layer with parameters, so no output layer.")
    if not isinstance(last[1], nn.Linear):
        raise AdapterError(
            f"The last layer with parameters of {type(module).__name__}, {last[0]!r}, is a "
            f"{type(last[1]).__name__}, not an nn.Linear. If it is the output layer, pass "
            f"`output_layer={last[0]!r}` to the callback (or set `output_layer_name` on the module); "
            f"otherwise name the right one. {_PROTOCOL_HINT}"
        )
    return last


def num_outputs(layer: nn.Module) -> int:
    """Number of outputs of an output layer (``out_features``, ``out_channels`` or the bias size)."""
    for attr in ("out_features", "out_channels", "num_embeddings"):
        value = getattr(layer, attr, None)
        if isinstance(value, int):
            return value
    bias = getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor):
        return bias.numel()
    raise AdapterError(f"Cannot tell how many outputs a {type(layer).__name__} has; pass `num_classes=`.")


def infer_task(
    module: nn.Module,
    task: str | None = None,
    loss_fn: Callable[..., Any] | None = None,
    output_layer: str | None = None,
) -> str:
    """The task of a model: explicit ``task``, a ``task`` attribute, else inferred from the loss.

    A BCE loss means ``binary`` with one output and ``multilabel`` with more.
    """
    if task not in (None, "auto"):
        return check_task(task)
    declared = getattr(module, "task", None)
    if isinstance(declared, str):
        return check_task(declared, argument=f"{type(module).__name__}.task")
    criterion = _criterion_of(module, loss_fn)
    kind = None
    if isinstance(criterion, _CLASSIFICATION_LOSSES):
        kind = "multiclass"
    elif isinstance(criterion, _BCE_LOSSES):
        kind = "bce"
    elif isinstance(criterion, _REGRESSION_LOSSES):
        kind = "regression"
    elif criterion in _FUNCTIONAL_TASKS:
        kind = _FUNCTIONAL_TASKS[criterion]
    if kind == "bce":
        kind = "binary" if num_outputs(find_output_layer(module, output_layer)[1]) == 1 else "multilabel"
    if kind is None:
        raise AdapterError(
            f"Cannot infer the task of {type(module).__name__} from its loss ({criterion!r}): set a `task` "
            f"attribute on the module or pass `task=` (one of {', '.join(TASKS)}) to the callback."
        )
    return kind


@dataclass(frozen=True)
class ModelAdapter:
    """The overrides a callback was given, applied on top of the protocol's defaults.

    Callbacks hold one of these and call its methods instead of touching the
    user's module directly, so every trick adapts to a model the same way.
    """

    split_batch: Callable[[Any], tuple[Any, Any]] | None = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    output_layer: str | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        if self.task is not None:
            check_task(self.task, allow_auto=True)
        if self.split_batch is not None and not callable(self.split_batch):
            raise AdapterError(f"`split_batch` must be callable as split_batch(batch), got {self.split_batch!r}.")
        if self.output_layer is not None and not isinstance(self.output_layer, str):
            raise AdapterError(f"`output_layer` must be a submodule name (str), got {self.output_layer!r}.")

    def inputs_targets(self, module: nn.Module, batch: Any) -> tuple[Any, Any]:
        return split_batch(batch, module, self.split_batch)

    def loss(self, module: nn.Module, outputs: Any, targets: Any) -> torch.Tensor:
        return loss_function(module, self.loss_fn)(outputs, targets)

    def output_layer_of(self, module: nn.Module) -> tuple[str, nn.Module]:
        return find_output_layer(module, self.output_layer)

    def task_of(self, module: nn.Module) -> str:
        return infer_task(module, self.task, self.loss_fn, self.output_layer)


class TrickModule:
    """Mixin that states the protocol lightning-tricks callbacks rely on, with its defaults.

    Mix it into a ``LightningModule`` (``class Net(TrickModule, LightningModule)``)
    and override only what differs from the convention. Nothing here is
    required: a plain module with ``(inputs, targets)`` batches, a
    ``criterion`` and a final ``nn.Linear`` works without it.
    """

    #: ``"multiclass" | "binary" | "multilabel" | "regression"``, or None to infer from the loss.
    task: str | None = None
    #: Name of the output layer (``"head.fc"``), or None for the last ``nn.Linear``.
    output_layer_name: str | None = None

    def split_batch(self, batch: Any) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch; inputs are what ``self(inputs)`` takes."""
        return default_split_batch(batch)

    def init_output_bias(
        self, dataloader: Any, max_batches: int | None = None, zero_weights: bool = False
    ) -> torch.Tensor:
        """Set the output layer's bias from the targets of ``dataloader`` (recipe 2.5); return it.

        The one-process form of :class:`~lightning_tricks.callbacks.LastLayerBiasInit`, for use before a
        Trainer exists (e.g. at the end of ``__init__`` or in a notebook).
        """
        from lightning_tricks.functional.bias_init import TargetStats, bias_from_stats

        adapter = ModelAdapter()
        task = adapter.task_of(self)
        name, layer = adapter.output_layer_of(self)
        if not isinstance(getattr(layer, "bias", None), torch.Tensor):
            raise AdapterError(f"The output layer {name!r} has no bias (bias=False?): nothing to initialise.")
        stats = TargetStats.empty(task, layer.bias.numel())
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            stats.add(adapter.inputs_targets(self, batch)[1])
        value = bias_from_stats(stats)
        with torch.no_grad():
            layer.bias.copy_(value.to(layer.bias.dtype).reshape(layer.bias.shape))
            if zero_weights:
                layer.weight.zero_()
        return value

    def compute_loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Mean loss of a batch; the default applies ``self.criterion``."""
        criterion = getattr(self, "criterion", None)
        if not callable(criterion):
            raise AdapterError(
                f"{type(self).__name__} has no callable `criterion`: set one (e.g. nn.CrossEntropyLoss()) or "
                f"override `compute_loss(self, outputs, targets)`."
            )
        return criterion(outputs, targets)
