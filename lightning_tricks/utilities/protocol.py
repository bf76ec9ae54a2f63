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

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_tricks.utilities.arguments import TASKS, check_task

#: Dict keys tried, in order, for the inputs and the targets of a dict batch.
INPUT_KEYS = ("inputs", "input", "x", "image", "images", "pixel_values", "features", "input_ids", "data")
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

# Tasks read off a module's outputs (ModelAdapter.task_of), per module.
_OBSERVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The last layer with parameters that a forward pass called, per module (ModelAdapter.output_layer_of).
_CALLED_LAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def find_output_layer(module: nn.Module, name: str | None = None, called: bool = False) -> tuple[str, nn.Module]:
    """``(name, layer)`` of the module's output layer.

    Order: the explicit ``name``; an ``output_layer`` attribute that is a module;
    the layer named by an ``output_layer_name`` attribute; else the last layer
    that holds parameters (``called``: ``name`` is the last one a forward pass
    called; else the last registered), which must be an ``nn.Linear`` — we
    refuse to guess when it is anything else, because picking an earlier Linear
    would silently set up the wrong layer.
    """
    if called:
        last = (name, module.get_submodule(name))
        return _check_linear(module, last)
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
    return _check_linear(module, last)


def _check_linear(module: nn.Module, last: tuple[str, nn.Module]) -> tuple[str, nn.Module]:
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


def has_loss_function(module: nn.Module, loss_fn: Callable[..., Any] | None = None) -> bool:
    """Whether ``(outputs, targets) -> loss`` exists: ``loss_fn=``, ``compute_loss``, ``criterion`` or ``loss_fn``.

    :class:`TrickModule`'s default ``compute_loss`` only applies ``criterion``, so it counts only with one.
    """
    if (
        loss_fn is not None
        or callable(getattr(module, "criterion", None))
        or callable(getattr(module, "loss_fn", None))
    ):
        return True
    compute = getattr(type(module), "compute_loss", None)
    return callable(compute) and compute is not TrickModule.compute_loss


@contextmanager
def _no_logging(module: nn.Module) -> Iterator[None]:
    """``module.log`` / ``log_dict`` as no-ops: a step run by a callback must not log (nor fail to, outside a loop)."""
    names = [n for n in ("log", "log_dict") if callable(getattr(module, n, None))]
    saved = {n: module.__dict__[n] for n in names if n in module.__dict__}
    for name in names:
        object.__setattr__(module, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for name in names:
            if name in saved:
                object.__setattr__(module, name, saved[name])
            else:
                module.__dict__.pop(name, None)


def check_elementwise_shapes(fn: Any, outputs: Any, targets: Any) -> None:
    """Refuse an elementwise loss (MSE, L1, BCE, ...) on outputs and targets of different shapes.

    ``MSELoss`` of ``(N, 1)`` outputs against ``(N,)`` targets broadcasts to ``(N, N)`` and returns a
    wrong number without an error (measured: 1051.3 where the module's own loss was 1038.3). A
    module that squeezes in its step knows what it means; a callback does not guess.
    """
    elementwise = isinstance(fn, (*_BCE_LOSSES, *_REGRESSION_LOSSES)) or _FUNCTIONAL_TASKS.get(fn) in (
        "bce",
        "regression",
    )
    if not elementwise or not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return
    if outputs.shape != targets.shape:
        raise AdapterError(
            f"The loss {fn!r} would compare outputs of shape {tuple(outputs.shape)} with targets of shape "
            f"{tuple(targets.shape)} and broadcast them into a wrong number. Define "
            f"`compute_loss(self, outputs, targets)` that reshapes as your training_step does (e.g. "
            f"`outputs.squeeze(-1)`), or pass `loss_fn=`; without a `criterion`/`loss_fn` attribute the "
            f"callbacks use your training_step's own loss. {_PROTOCOL_HINT}"
        )


def step_loss(module: nn.Module, batch: Any, batch_idx: int = 0) -> torch.Tensor:
    """The loss the module's own step returns for ``batch``, with its logging suppressed.

    In training mode ``training_step``; in eval mode ``validation_step`` when it returns a loss, else
    ``training_step`` (many ``validation_step`` only log). A step may return the loss tensor or a
    dict with ``"loss"``. This is the route for a module that computes its loss inline
    (``F.cross_entropy(self(x), y)`` in its step): one scalar, the batch mean as the module defines it.

    Raises:
        AdapterError: manual optimization (the step would step the optimizers itself), or a step that
            returns no scalar loss.
    """
    name = type(module).__name__
    if getattr(module, "automatic_optimization", True) is False:
        raise AdapterError(
            f"{name} uses manual optimization: its training_step steps the optimizers itself, so a callback "
            f"cannot run it for a loss. Define `compute_loss(self, outputs, targets)` or a `criterion`, or "
            f"pass `loss_fn=` to the callback. {_PROTOCOL_HINT}"
        )
    hooks = ["training_step"]
    if not module.training and _overrides(module, "validation_step"):
        hooks.insert(0, "validation_step")
    returned = None
    for hook in hooks:
        if not _overrides(module, hook):
            continue
        with _no_logging(module):
            returned = getattr(module, hook)(batch, batch_idx)
        loss = returned.get("loss") if isinstance(returned, Mapping) else returned
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            return loss.reshape(())
    raise AdapterError(
        f"Cannot find the loss of {name}: it has no `compute_loss`, `criterion` or `loss_fn`, and its "
        f"{' / '.join(hooks)} returned {type(returned).__name__}, not a scalar loss tensor (or a dict with "
        f"'loss'). Return the loss from `training_step`, define `compute_loss(self, outputs, targets)`, or "
        f"pass `loss_fn=` to the callback. {_PROTOCOL_HINT}"
    )


def _overrides(module: nn.Module, hook: str) -> bool:
    """Whether ``module`` defines ``hook`` itself (not Lightning's default, which does nothing useful here)."""
    own = getattr(type(module), hook, None)
    if own is None:
        return False
    import lightning.pytorch as pl

    return not isinstance(module, pl.LightningModule) or own is not getattr(pl.LightningModule, hook, None)


def observed_task(outputs: Any, targets: Any) -> str | None:
    """The task that a batch's outputs and targets show, or None when they do not say.

    - integer targets ``(N, ...)`` and float outputs ``(N, C, ...)`` with ``C > 1``: multiclass
      (the class dimension second, as ``F.cross_entropy`` wants: ``(N, C, H, W)`` for segmentation);
    - targets of 0/1 (bool, integer or float) and one output per sample: binary;
    - 0/1 targets of the outputs' shape ``(N, K)``, ``K > 1``: multilabel;
    - float targets otherwise: regression.

    >>> observed_task(torch.zeros(4, 3), torch.tensor([0, 2, 1, 0]))
    'multiclass'
    >>> observed_task(torch.zeros(4, 1), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    'binary'
    >>> observed_task(torch.zeros(4), torch.tensor([0.5, 2.0, 1.0, 3.0]))
    'regression'
    """
    outputs = logits_of(outputs)
    if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor) or outputs.ndim == 0:
        return None
    n = outputs.shape[0]
    if targets.ndim == 0 or targets.shape[0] != n:
        return None
    zero_one = targets.numel() > 0 and bool(((targets == 0) | (targets == 1)).all())
    per_sample = outputs[0].numel()
    if not targets.is_floating_point() and targets.dtype != torch.bool:
        if outputs.ndim >= 2 and outputs.shape[1] > 1 and tuple(targets.shape) == (n, *outputs.shape[2:]):
            return "multiclass"
        if per_sample == 1 and zero_one:
            return "binary"
        if targets.shape == outputs.shape and zero_one:
            return "multilabel"
        return None
    if zero_one and per_sample == 1:
        return "binary"
    if zero_one and targets.shape == outputs.shape and per_sample > 1:
        return "multilabel"
    return "regression"


def logits_of(outputs: Any) -> Any:
    """The prediction tensor of a model's output: a tensor, ``.logits`` (Hugging Face), or a dict/tuple's first."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, Mapping):
        return outputs.get("logits", next(iter(outputs.values()), None))
    if isinstance(outputs, (tuple, list)) and outputs:
        return outputs[0]
    return None


def replace_inputs(batch: Any, fn: Callable[[Any], Any]) -> Any:
    """``batch`` with its inputs replaced by ``fn(inputs)``, by the convention of :func:`default_split_batch`."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return type(batch)([fn(batch[0]), *batch[1:]])
    if isinstance(batch, Mapping):
        key = next((k for k in INPUT_KEYS if k in batch), None)
        if key is not None:
            return {**batch, key: fn(batch[key])}
    raise AdapterError(f"Cannot find the inputs of a batch of type {type(batch).__name__} to replace them.")


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
        fn = loss_function(module, self.loss_fn)
        check_elementwise_shapes(fn, outputs, targets)
        return fn(outputs, targets)

    def has_loss_function(self, module: nn.Module) -> bool:
        return has_loss_function(module, self.loss_fn)

    def batch_loss(self, module: nn.Module, batch: Any, inputs_fn: Callable[[Any], Any] | None = None) -> torch.Tensor:
        """The mean loss of ``batch`` (its inputs through ``inputs_fn`` first, if given).

        Through the loss function when there is one (``loss_fn=``, ``compute_loss``, ``criterion``,
        ``loss_fn``: exact and per-sample capable), else through the module's own step
        (:func:`step_loss`), which sees the batch exactly as training does.
        """
        if self.has_loss_function(module):
            inputs, targets = self.inputs_targets(module, batch)
            return self.loss(module, module(inputs if inputs_fn is None else inputs_fn(inputs)), targets)
        if inputs_fn is not None:
            if self.split_batch is not None:
                raise AdapterError(
                    "With a custom `split_batch` and no loss function the inputs cannot be replaced inside the "
                    "batch for the module's step: pass `loss_fn=` (or define `compute_loss`) as well."
                )
            batch = replace_inputs(batch, inputs_fn)
        return step_loss(module, batch)

    def output_layer_of(self, module: nn.Module, batch: Any = None) -> tuple[str, nn.Module]:
        """The output layer: ``output_layer=``, the module's ``output_layer``/``output_layer_name``, else the
        last layer with parameters *called* on ``batch`` (a batch or a function returning one), else the
        last one registered. Call order matters where a model registers its head before its trunk.
        """
        if self.output_layer is None and getattr(module, "output_layer_name", None) is None:
            if not isinstance(getattr(module, "output_layer", None), nn.Module) and batch is not None:
                name = _CALLED_LAST.get(module)
                if name is None:
                    name = self._called_last(module, batch)
                if name is not None:
                    return find_output_layer(module, name, called=True)
        return find_output_layer(module, self.output_layer)

    def _called_last(self, module: nn.Module, batch: Any) -> str | None:
        """Name of the last layer with parameters that a forward pass on ``batch`` calls (remembered)."""
        order: list[str] = []
        handles = [
            layer.register_forward_hook(lambda _m, _a, _o, name=name: order.append(name))
            for name, layer in module.named_modules()
            if name and next(layer.parameters(recurse=False), None) is not None
        ]
        try:
            if callable(batch):
                batch = batch()
            inputs, _ = self.inputs_targets(module, batch)
            with torch.no_grad():
                module(inputs)
        except Exception:  # a model not callable on its inputs alone: registration order decides
            return None
        finally:
            for handle in handles:
                handle.remove()
        if order:
            _CALLED_LAST[module] = order[-1]
        return order[-1] if order else None

    def task_of(self, module: nn.Module, batch: Any = None) -> str:
        """The task: ``task=``, the module's ``task``, its loss, else what ``batch`` shows (outputs and targets).

        The last route runs ``module(inputs)`` on ``batch`` (a batch, or a function returning one, called
        only if the other routes fail; no gradients) and reads
        :func:`observed_task`; its answer is remembered for the module, so later calls without a
        batch get it too.
        """
        try:
            return infer_task(module, self.task, self.loss_fn, self.output_layer)
        except AdapterError as error:
            known = _OBSERVED.get(module)
            if known is not None:
                return known
            if batch is None:
                raise
            try:
                if callable(batch):  # a batch fetched only when needed
                    batch = batch()
                inputs, targets = self.inputs_targets(module, batch)
                with torch.no_grad():
                    outputs = module(inputs)
            except Exception:
                raise error from None
            task = observed_task(outputs, targets)
            if task is None:
                raise
            _OBSERVED[module] = task
            return task


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
