"""Lint: a Dropout that feeds a BatchNorm (the "variance shift" of Li et al., 2019).

Dropout rescales kept units by ``1/(1-p)``, so the variance a following BatchNorm sees in training
differs from the one it sees at test time, when dropout is off; the running statistics it learned no
longer fit, and test accuracy suffers ("Understanding the disharmony between dropout and batch
normalization by variance shift", Li, Chen, Hu & Yang, CVPR 2019). The usual fix: put Dropout after
the last BatchNorm, or drop one of the two.

The order that matters is the order of *execution*, not of registration (``forward`` may call modules
in any order), so the lint runs one forward pass of a real batch in eval mode, with no grad, and
records the leaf modules as they are called. The rule, over that call sequence:

- a Dropout (``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``) with
  ``p > 0`` opens a chain;
- leaves with no parameters and no buffers (activations, pooling, ``Flatten``, ``Identity``, a
  ``p = 0`` Dropout) pass it on: they do not undo the variance shift;
- a BatchNorm reached while a chain is open is flagged, naming both layers;
- any other leaf (a layer with parameters or buffers: Linear, Conv, LayerNorm, Embedding, or a
  BatchNorm itself) closes the chain, except that with ``through_weights=True`` Linear and Conv layers
  pass it on too (the shift survives a weight layer: Li et al.'s ``Dropout -> Conv -> BN``).

Limitations: the sequence is flat, so in a model with branches (residual blocks) a Dropout at the end
of one branch can appear to feed the first BatchNorm of the next; such a report needs a look. Modules
used through the functional API (``F.dropout``) are invisible to hooks.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm  # the common base of BatchNorm1d/2d/3d, Lazy* and SyncBatchNorm

from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, shared_batches
from lightning_tricks.utilities.isolation import evaluating

DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
WEIGHT_LAYERS = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def call_order(module: nn.Module, *args: Any) -> list[str]:
    """Names of the leaf modules of ``module`` in the order ``module(*args)`` calls them (repeats kept).

    Runs in eval mode under no grad with the RNG isolated; modes are restored and hooks removed afterwards.
    """
    order: list[str] = []
    handles = []
    try:
        for name, leaf in module.named_modules():
            if next(leaf.children(), None) is None:
                # default argument binds the name now, not at call time
                handles.append(leaf.register_forward_hook(lambda *_, name=name: order.append(name)))
        with evaluating(module):
            module(*args)
    finally:
        for handle in handles:
            handle.remove()
    return order


def dropout_batchnorm_pairs(
    module: nn.Module, order: list[str], through_weights: bool = False
) -> list[tuple[str, str]]:
    """``(dropout, batchnorm)`` name pairs where the Dropout feeds the BatchNorm, by the rule above.

    >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.ReLU(), nn.BatchNorm1d(4), nn.Dropout(0.1))
    >>> dropout_batchnorm_pairs(net, ["0", "1", "2", "3", "4"])
    [('1', '3')]
    """
    modules = dict(module.named_modules())
    pairs: list[tuple[str, str]] = []
    source: str | None = None  # the Dropout whose output is still flowing, unchanged in kind
    for name in order:
        leaf = modules[name]
        if isinstance(leaf, DROPOUTS) and leaf.p > 0:
            source = name
        elif isinstance(leaf, _BatchNorm):
            if source is not None and (source, name) not in pairs:
                pairs.append((source, name))
            source = None  # BatchNorm re-standardises: what follows is a fresh chain
        elif through_weights and isinstance(leaf, WEIGHT_LAYERS):
            continue
        elif any(True for _ in leaf.parameters()) or any(True for _ in leaf.buffers()):
            source = None
    return pairs


class DropoutBatchNormLint(RecipeCheck):
    """Warn at fit start when a Dropout feeds a BatchNorm; see the module docstring for the rule.

    Costs one forward pass of rank 0's first training batch in eval mode; the verdict is the same on
    every rank. ``result.details["pairs"]`` lists the ``(dropout, batchnorm)`` layer names.

    Args:
        through_weights: also follow the chain through Linear/Conv layers (``Dropout -> Linear -> BN``).
        (others: see :class:`RecipeCheck`; ``on_failure`` is ``"warn"`` by default: a lint, not an error)
    """

    name = "dropout_batchnorm"

    def __init__(
        self,
        through_weights: bool = False,
        on_failure: str = "warn",
        run_on_resume: bool = False,
        split_batch=None,
        loss_fn=None,
        output_layer: str | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(on_failure, run_on_resume, split_batch, loss_fn, output_layer, task)
        if not isinstance(through_weights, bool):
            raise ValueError(f"DropoutBatchNormLint: `through_weights` must be True or False, got {through_weights!r}.")
        self.through_weights = through_weights

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        (batch,) = shared_batches(trainer, pl_module, 1)
        inputs, _ = self.adapter.inputs_targets(pl_module, batch)
        order = call_order(pl_module, inputs)  # eval mode, no grad, RNG isolated, hooks removed
        pairs = dropout_batchnorm_pairs(pl_module, order, self.through_weights)
        details = {"pairs": pairs, "leaf_calls": len(order)}
        if pairs:
            listed = ", ".join(f"{d} -> {b}" for d, b in pairs)
            message = (
                f"Dropout feeds BatchNorm ({listed}): the BatchNorm's running statistics, learned with dropout "
                f"on, will not match test time (variance shift, Li et al. 2019). Move Dropout after the last "
                f"BatchNorm or drop one of them."
            )
            return CheckResult(self.name, False, message, float(len(pairs)), 0.0, details)
        return CheckResult(self.name, True, "no Dropout feeds a BatchNorm", 0.0, 0.0, details)
