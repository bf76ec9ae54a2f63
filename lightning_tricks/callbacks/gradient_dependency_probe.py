"""Recipe 2.12: backprop to chart dependencies — catches batch-mixing bugs (a `view` meant as a `transpose`)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, shared_batches
from lightning_tricks.functional.gradient_dependency import batch_dependency, causal_violations
from lightning_tricks.utilities.isolation import preserved
from lightning_tricks.utilities.protocol import AdapterError, logits_of


class GradientDependencyProbe(RecipeCheck):
    """Check, on a real training batch, that output i depends on input i only — for every sample.

    Costs one forward and two backward passes of the batch (plus one backward per reported suspect on
    failure), with normalisation and dropout layers in eval mode: BatchNorm mixes samples in training
    mode by design, which is not a bug. Integer (token) inputs are probed at the output of the first
    ``nn.Embedding`` (or ``embedding_layer=``). ``causal=True`` also checks that on ``(B, T, ...)``
    outputs position t does not see inputs at positions > t. One more forward pass of the same batch,
    still in eval mode, must give the same outputs (within ``rtol`` of their scale): an output that
    also depends on the random stream at inference is dropout left on at evaluation (``F.dropout``
    without ``training=self.training``) or noise in ``forward``, and fails the check.

    Args:
        rtol: relative disagreement above which an input counts as mixed.
        causal: also check the sequence dimension (dim 1) for look-ahead.
        embedding_layer: name of the layer whose output is probed for integer inputs.
        (others: see :class:`RecipeCheck`)
    """

    name = "gradient_dependency"

    def __init__(
        self,
        rtol: float = 1e-3,
        causal: bool = False,
        embedding_layer: str | None = None,
        on_failure: str = "raise",
        run_on_resume: bool = False,
        split_batch=None,
        loss_fn=None,
        output_layer: str | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(on_failure, run_on_resume, split_batch, loss_fn, output_layer, task)
        if not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
            raise ValueError(f"GradientDependencyProbe: `rtol` must be a number in (0, 1), got {rtol!r}.")
        self.rtol, self.causal, self.embedding_layer = float(rtol), bool(causal), embedding_layer

    def _embedding(self, pl_module: nn.Module) -> nn.Module:
        if self.embedding_layer is not None:
            return pl_module.get_submodule(self.embedding_layer)
        for module in pl_module.modules():
            if isinstance(module, nn.Embedding):
                return module
        raise AdapterError(
            "GradientDependencyProbe: the inputs are integers (tokens) and the model has no nn.Embedding to probe "
            "at; pass `embedding_layer=` naming the layer that turns them into vectors."
        )

    def probe(self, pl_module: nn.Module, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(outputs, probed)``: the outputs and the leaf tensor (inputs or embeddings) they are differentiated by.

        ``inputs`` is a tensor, or a tuple/list whose first item is one (e.g. ``(token ids, lengths)`` of a packed
        sequence): that item is probed, the others are passed along unchanged.
        """
        if isinstance(inputs, torch.Tensor):
            first, call = inputs, pl_module
        elif isinstance(inputs, (tuple, list)) and inputs and isinstance(inputs[0], torch.Tensor):
            first, rest = inputs[0], list(inputs[1:])

            def call(x: torch.Tensor) -> Any:
                items = [x, *rest]  # the same container: a namedtuple takes its fields as arguments
                return pl_module(type(inputs)(*items) if hasattr(inputs, "_fields") else type(inputs)(items))
        else:
            raise AdapterError(
                f"GradientDependencyProbe needs the model input to be a tensor, or a tuple whose first item is the "
                f"batch's tensor, got {type(inputs).__name__}; pass `split_batch=` returning (inputs, targets)."
            )
        if first.is_floating_point():
            probed = first.detach().clone().requires_grad_(True)
            return call(probed), probed
        leaf: dict[str, torch.Tensor] = {}

        def swap(_module, _args, output):
            leaf["x"] = output.detach().clone().requires_grad_(True)
            return leaf["x"]

        handle = self._embedding(pl_module).register_forward_hook(swap)
        try:
            outputs = call(first)
        finally:
            handle.remove()
        return outputs, leaf["x"]

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        (batch,) = shared_batches(trainer, pl_module, 1)
        inputs, _ = self.adapter.inputs_targets(pl_module, batch)
        with preserved(pl_module), torch.enable_grad():
            pl_module.eval()  # BatchNorm/Dropout: per-sample behaviour, as at inference
            outputs, probed = self.probe(pl_module, inputs)
            outputs = logits_of(outputs)  # a Hugging Face ModelOutput, a dict or tuple: its predictions
            if not isinstance(outputs, torch.Tensor) or outputs.shape[0] != probed.shape[0]:
                raise AdapterError(
                    "GradientDependencyProbe: the model's output must be a tensor whose first dimension is the batch."
                )
            report = batch_dependency(outputs, probed, rtol=self.rtol)
            # The same batch once more, still in eval mode: at inference an output depends on its input only,
            # not on the random stream too. A second draw of dropout left on changes it.
            with torch.no_grad():
                again = logits_of(pl_module(inputs))
            changed = _changed_fraction(outputs.detach(), again, self.rtol)
            causal = []
            if self.causal and outputs.ndim >= 2 and probed.ndim >= 2:
                length = min(outputs.shape[1], probed.shape[1])
                causal = causal_violations(outputs, probed, positions=sorted({0, length // 2}))
        batch_size = probed.shape[0]
        details = {
            "batch_size": batch_size,
            "mixed_inputs": len(report.mixed_inputs),
            "backward_passes": report.backward_passes,
            "pairs": report.pairs[:20],
            "causal_violations": causal[:20],
            "changed_at_eval": changed,
        }
        if float(report.input_gradient_norm.max()) == 0.0:
            return CheckResult(
                self.name,
                False,
                "no gradient reaches the inputs at all: the output does not depend on the input (a detach, a "
                "constant path, or inputs that never reach the output).",
                0.0,
                None,
                details,
            )
        problems = []
        if report.mixed_inputs:
            problems.append(
                f"{len(report.mixed_inputs)} of {batch_size} samples feed other samples' outputs, e.g. (output, input) "
                f"pairs {report.pairs[:6]}: something mixes the batch dimension (a .view() where a .transpose()/"
                f".permute() was meant, a reduction over dim 0, BatchNorm-like statistics in eval mode)."
            )
        if causal:
            problems.append(f"outputs see future positions, e.g. (position, future input) {causal[:6]}.")
        if changed:
            problems.append(
                f"in eval mode, two passes of the same batch gave different outputs ({changed:.0%} of them changed): "
                "randomness is active at evaluation. Likely causes, in order: 1. dropout left on "
                "(F.dropout(x, p) without training=self.training, or a Dropout module kept in train mode); "
                "2. noise or sampling in forward that does not check self.training."
            )
        measured = float(len(report.mixed_inputs))
        if problems and not report.mixed_inputs and not causal:
            measured = changed
        if problems:
            return CheckResult(self.name, False, " ".join(problems), measured, 0.0, details)
        message = f"all {batch_size} outputs depend on their own input only" + (
            " and no future position" if self.causal else ""
        )
        return CheckResult(self.name, True, message, measured, 0.0, details)


def _changed_fraction(first: torch.Tensor, second: object, rtol: float) -> float:
    """The fraction of outputs that differ between two passes by more than ``rtol`` of the outputs' scale."""
    if not isinstance(second, torch.Tensor) or second.shape != first.shape:
        return 1.0
    first, second = first.float(), second.float()
    scale = float(first.abs().max()) if first.numel() else 0.0
    if scale == 0.0 or not torch.isfinite(first).all():
        return 0.0
    return float(((first - second).abs() > rtol * scale).float().mean())
