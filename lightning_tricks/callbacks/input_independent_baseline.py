"""Recipe 2.7: an input-independent baseline — the model must do clearly better on real inputs than on zeros."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, shared_batches, val_loader
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.isolation import fresh_optimizer, preserved
from lightning_tricks.utilities.plots import loss_curve


def zeros_like_inputs(inputs: Any) -> Any:
    """The same structure with every floating tensor zeroed (integer tokens become token 0)."""
    if isinstance(inputs, torch.Tensor):
        return torch.zeros_like(inputs)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(zeros_like_inputs(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: zeros_like_inputs(v) for k, v in inputs.items()}
    return inputs


class InputIndependentBaseline(RecipeCheck):
    """Train the model twice from its initial weights — on real inputs and on zeroed inputs — and compare.

    Both runs take ``steps`` optimizer steps over rank 0's first ``train_batches`` training batches
    (same order, same seed, fresh optimizers from ``configure_optimizers`` at the LRs the user
    configured, see :func:`~lightning_tricks.utilities.isolation.configured_lrs`) and are scored on the
    first ``val_batches`` validation batches (zeroed for the baseline). The check fails when the real
    model's validation loss is not below ``(1 - margin)`` times the baseline's: the model ignores its
    input, or inputs and labels are misaligned. The model and RNG are restored afterwards.
    """

    name = "input_independent_baseline"

    def __init__(
        self,
        steps: int = 100,
        train_batches: int = 8,
        val_batches: int = 4,
        margin: float = 0.1,
        optimizer: Any = None,
        seed: int = 0,
        on_failure: str = "raise",
        run_on_resume: bool = False,
        split_batch=None,
        loss_fn=None,
        output_layer: str | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(on_failure, run_on_resume, split_batch, loss_fn, output_layer, task)
        for arg, value in (("steps", steps), ("train_batches", train_batches), ("val_batches", val_batches)):
            check_int(value, arg, owner="InputIndependentBaseline")
        if not isinstance(margin, (int, float)) or not 0 <= margin < 1:
            raise ValueError(f"InputIndependentBaseline: `margin` must be a number in [0, 1), got {margin!r}.")
        self.steps, self.train_batches, self.val_batches = steps, train_batches, val_batches
        self.margin, self.optimizer, self.seed = float(margin), optimizer, seed

    def _train_and_score(self, pl_module, train, val, zero: bool) -> tuple[float, list[float]]:
        prepare = zeros_like_inputs if zero else None
        curve = []
        with preserved(pl_module, seed=self.seed), torch.enable_grad():
            optimizer = fresh_optimizer(pl_module, self.optimizer, owner="InputIndependentBaseline")
            pl_module.train()
            for step in range(self.steps):
                optimizer.zero_grad(set_to_none=True)
                loss = self.adapter.batch_loss(pl_module, train[step % len(train)], prepare)
                curve.append(float(loss.detach()))
                loss.backward()
                optimizer.step()
            pl_module.eval()
            with torch.no_grad():
                scores = [float(self.adapter.batch_loss(pl_module, batch, prepare)) for batch in val]
        return sum(scores) / len(scores), curve

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        train = shared_batches(trainer, pl_module, self.train_batches)
        val = shared_batches(trainer, pl_module, self.val_batches, val_loader(trainer, pl_module))
        real, real_curve = self._train_and_score(pl_module, train, val, zero=False)
        zero, zero_curve = self._train_and_score(pl_module, train, val, zero=True)
        details = {"real_val_loss": real, "zero_input_val_loss": zero, "steps": self.steps, "margin": self.margin}
        figure = loss_curve({"real inputs": real_curve, "zeroed inputs": zero_curve}, "input-independent baseline")
        bound = (1 - self.margin) * zero
        head = f"val loss {real:.4g} on real inputs vs {zero:.4g} on zeroed inputs after {self.steps} steps"
        if real < bound:
            return CheckResult(self.name, True, head, real, bound, details, {"curves": figure})
        why = (
            f"the model does not do clearly better (needs < {bound:.4g}) with its inputs than without: the "
            f"inputs may not reach the output, labels may be misaligned with inputs (shifted, shuffled "
            f"separately), or {self.steps} steps are too few for this learning rate."
        )
        return CheckResult(self.name, False, f"{head}; {why}", real, bound, details, {"curves": figure})
