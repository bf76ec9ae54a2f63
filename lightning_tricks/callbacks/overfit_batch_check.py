"""Recipe 2.8: overfit one batch — with enough capacity the loss on one small batch must reach ~0."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, shared_batches
from lightning_tricks.functional.sample_losses import correct_predictions
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.isolation import fresh_optimizer, preserved
from lightning_tricks.utilities.plots import loss_curve


def take(batch: Any, n: int) -> Any:
    """The first ``n`` samples of every tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, (list, tuple)):
        return type(batch)(take(b, n) for b in batch)
    if isinstance(batch, dict):
        return {k: take(v, n) for k, v in batch.items()}
    return batch


def train_without_dropout(module: nn.Module) -> None:
    """Training mode (BatchNorm uses the batch's statistics) with dropout off: overfitting wants no regulariser."""
    module.train()
    for m in module.modules():
        if isinstance(
            m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
        ):
            m.eval()


def fits_exactly(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> bool | None:
    """Whether every prediction is right (None for regression, where the loss alone decides)."""
    correct = correct_predictions(task, outputs, targets)
    return None if correct is None else correct == len(targets)


class OverfitBatchCheck(RecipeCheck):
    """Train on one fixed batch with a fresh optimizer; the loss must fall to ``rel_threshold`` of its start.

    The batch is the first ``batch_size`` samples of rank 0's first training batch (the same on every
    rank), trained with dropout off and BatchNorm on the batch's statistics. The optimizer comes from
    ``configure_optimizers``, each param group at the LR the user configured whatever the scheduler
    (:func:`~lightning_tricks.utilities.isolation.configured_lrs`: OneCycle's ``max_lr``, else the LR
    the optimizer was built with), or from ``optimizer=``, a factory taking the parameters; the
    model's weights, buffers, gradients and modes and the RNG are restored afterwards.
    Classification must also reach 100% accuracy on the batch. The loss curve is logged as a figure.

    Args:
        max_steps: the budget of optimizer steps.
        batch_size: samples in the batch to overfit (None: the whole loader batch).
        rel_threshold: pass when the loss is below this fraction of its initial value.
        optimizer: factory ``params -> Optimizer`` instead of ``configure_optimizers``.
        seed: seed for dropout etc. inside the check.
    """

    name = "overfit_batch"

    def __init__(
        self,
        max_steps: int = 300,
        batch_size: int | None = 16,
        rel_threshold: float = 0.05,
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
        check_int(max_steps, "max_steps", owner="OverfitBatchCheck")
        check_int(batch_size, "batch_size", owner="OverfitBatchCheck", allow_none=True)
        if not isinstance(rel_threshold, (int, float)) or not 0 < rel_threshold < 1:
            raise ValueError(f"OverfitBatchCheck: `rel_threshold` must be a number in (0, 1), got {rel_threshold!r}.")
        self.max_steps, self.batch_size, self.rel_threshold = max_steps, batch_size, float(rel_threshold)
        self.optimizer, self.seed = optimizer, seed

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        (batch,) = shared_batches(trainer, pl_module, 1)
        if self.batch_size is not None:
            batch = take(batch, self.batch_size)
        with preserved(pl_module):
            task = self.adapter.task_of(pl_module, batch)
        inputs, targets = self.adapter.inputs_targets(pl_module, batch)
        # Exactness (every prediction right) needs the outputs: only on the loss-function route.
        scored = self.adapter.has_loss_function(pl_module)
        losses: list[float] = []
        solved_at, exact = None, None
        with preserved(pl_module, seed=self.seed), torch.enable_grad():
            optimizer = fresh_optimizer(pl_module, self.optimizer, owner="OverfitBatchCheck")
            train_without_dropout(pl_module)
            for step in range(self.max_steps):
                optimizer.zero_grad(set_to_none=True)
                loss = self.adapter.batch_loss(pl_module, batch)
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    break
                loss.backward()
                optimizer.step()
                if step % 10 == 9 or step == self.max_steps - 1:
                    # Scored in the mode it trains in: on one fixed batch, BatchNorm's batch statistics are
                    # exact, while its running averages still lag behind the weights.
                    with torch.no_grad():
                        if scored:
                            outputs = pl_module(inputs)
                            final = float(self.adapter.loss(pl_module, outputs, targets))
                            exact = fits_exactly(task, outputs, targets)
                        else:
                            final = float(self.adapter.batch_loss(pl_module, batch))
                    if final <= self.rel_threshold * losses[0] and exact is not False:
                        solved_at = step + 1
                        losses.append(final)
                        break
        start, end = losses[0], losses[-1]
        n = targets.shape[0] if isinstance(targets, torch.Tensor) else len(targets)
        details = {"steps": solved_at or len(losses), "initial_loss": start, "batch_size": n, "task": task}
        figure = loss_curve({"overfit one batch": losses}, f"overfit {n} samples")
        if solved_at is not None:
            message = f"loss {start:.4g} -> {end:.4g} on {n} samples in {solved_at} steps"
            return CheckResult(self.name, True, message, end, self.rel_threshold * start, details, {"curve": figure})
        if not math.isfinite(end):
            why = "the loss became non-finite: the learning rate is too high, or the inputs hold NaN/Inf."
        elif end > start:
            why = "the loss went up instead of down: the learning rate is too high for this model."
        elif end > 0.5 * start:
            why = (
                "the loss barely moved: the learning rate is too low or too high, gradients do not flow (a "
                "detach, frozen layers), or the outputs are squashed before the loss (a softmax before "
                "CrossEntropyLoss, which wants logits)."
            )
        else:
            why = "it learns but not enough: too little capacity, too strong regularisation, or too few steps."
        message = (
            f"could not overfit {n} samples: loss {start:.4g} -> {end:.4g} in {len(losses)} steps "
            f"(needs <= {self.rel_threshold:.0%} of the start"
            + (" and 100% accuracy" if exact is not None else "")
            + f"); {why}"
        )
        return CheckResult(self.name, False, message, end, self.rel_threshold * start, details, {"curve": figure})
