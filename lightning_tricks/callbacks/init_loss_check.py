"""Recipe 2.4: verify the loss at initialisation against the value it must have."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, as_float, shared_batches
from lightning_tricks.functional.init_loss import bias_matches_targets, expected_init_loss, likely_cause
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.isolation import preserved
from lightning_tricks.utilities.protocol import AdapterError


class InitLossCheck(RecipeCheck):
    """Measure the mean loss at init on real training batches and compare it with the derived expectation.

    The expectation is the loss of the constant prediction the output bias implies (``ln C`` for
    softmax cross-entropy with a zero bias, the prior's entropy after :class:`LastLayerBiasInit`, the
    target variance or mean square for MSE; see :func:`~lightning_tricks.functional.expected_init_loss`).

    Args:
        num_batches: training batches to average over (rank 0's, shared by all ranks).
        rtol: allowed relative difference between measured and expected.
        expected: the expected loss, when you know it better than the derivation.
        (others: see :class:`RecipeCheck`)
    """

    name = "init_loss"

    def __init__(
        self,
        num_batches: int = 4,
        rtol: float = 0.25,
        expected: float | None = None,
        on_failure: str = "raise",
        run_on_resume: bool = False,
        split_batch=None,
        loss_fn=None,
        output_layer: str | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(on_failure, run_on_resume, split_batch, loss_fn, output_layer, task)
        check_int(num_batches, "num_batches", owner="InitLossCheck")
        if not isinstance(rtol, (int, float)) or not rtol > 0:
            raise ValueError(f"InitLossCheck: `rtol` must be a number > 0, got {rtol!r}.")
        self.num_batches, self.rtol, self.expected = num_batches, float(rtol), expected

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        batches = shared_batches(trainer, pl_module, self.num_batches)
        with preserved(pl_module):
            pl_module.eval()
            task = self.adapter.task_of(pl_module, batches[0])
        try:
            with preserved(pl_module):
                layer_name, layer = self.adapter.output_layer_of(pl_module, batches[0])
            bias = getattr(layer, "bias", None)
        except AdapterError:
            if self.expected is None and task != "multiclass":
                raise
            layer_name, layer, bias = None, None, None
        targets = [self.adapter.inputs_targets(pl_module, batch)[1] for batch in batches]
        all_targets = torch.cat([t.reshape(t.shape[0], -1) if t.ndim > 1 else t for t in targets])
        num_outputs = layer.weight.shape[0] if layer is not None and hasattr(layer, "weight") else None
        details = {
            "rtol": self.rtol,
            "num_batches": len(batches),
            "task": task,
            "output_layer": layer_name,
        }
        too_few = self._too_few_outputs(task, all_targets, num_outputs, layer_name, details)
        if too_few is not None:
            return too_few
        losses = []
        with preserved(pl_module), torch.no_grad():
            pl_module.eval()
            for batch in batches:
                losses.append(as_float(self.adapter.batch_loss(pl_module, batch)))
        measured = sum(losses) / len(losses)
        # The prior-loss of the bias is expected only when the bias was set from the data; any other
        # bias (a default init, or one scaled up by mistake) is held to the zero-bias value.
        from_data = isinstance(bias, torch.Tensor) and bias_matches_targets(task, all_targets, bias)
        expected = (
            float(self.expected)
            if self.expected is not None
            else expected_init_loss(task, all_targets, bias if from_data else None, num_outputs)
        )
        passed = math.isfinite(measured) and abs(measured - expected) <= self.rtol * abs(expected)
        details["bias_from_data"] = bool(from_data)
        head = f"initial loss {measured:.4g}, expected {expected:.4g} (±{self.rtol:.0%}, {task})"
        if passed:
            return CheckResult(self.name, True, head, measured, expected, details)
        return CheckResult(
            self.name, False, f"{head}. {likely_cause(task, measured, expected)}", measured, expected, details
        )

    def _too_few_outputs(self, task, targets, num_outputs, layer_name, details) -> CheckResult | None:
        """FAIL before any loss is computed when class labels reach past the output layer (the wrong class count).

        Cross-entropy would raise an index error on CPU (or a device-side assert on GPU) that does not say
        which number is wrong. Negative labels are ignore indices (``-100``), not classes.
        """
        if task != "multiclass" or num_outputs is None or targets.is_floating_point() or targets.numel() == 0:
            return None
        largest = int(targets.max())
        if largest < num_outputs:
            return None
        details["largest_label"] = largest
        message = (
            f"labels go up to {largest} ({largest + 1}+ classes), but the output layer {layer_name!r} has "
            f"{num_outputs} outputs: the wrong class count. Likely causes, in order: 1. num_outputs/num_classes "
            f"set for another data set; 2. labels numbered from 1 instead of 0; 3. an ignore/padding label that "
            f"is not negative."
        )
        return CheckResult(self.name, False, message, float(largest + 1), float(num_outputs), details)
