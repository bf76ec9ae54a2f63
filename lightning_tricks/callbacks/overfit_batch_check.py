"""Recipe 2.8: overfit one batch — with enough capacity the loss on one small batch must reach ~0.

A model that cannot fit one batch at its configured LR is either broken or trained at the wrong
LR, and the two need opposite fixes. So before it blames the model the check tries the LR ten
times higher and ten times lower, and reports which of three it found: the batch fits at another
LR (an LR problem), at no LR tried (likely a bug), or the loss was still falling when the steps
ran out (inconclusive: the budget was too small to decide).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, shared_batches
from lightning_tricks.functional.loss_trend import HORIZON, round_steps, steps_to_reach
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


@dataclass
class Attempt:
    """One try at overfitting the batch at one LR: the loss before every step, and whether it fit."""

    factor: float
    lr: float
    losses: list[float]
    solved_at: int | None = None
    exact: bool | None = None

    @property
    def start(self) -> float:
        return self.losses[0]

    @property
    def end(self) -> float:
        return self.losses[-1]

    @property
    def diverged(self) -> bool:
        """The loss became non-finite or ended above where it started: this LR is too high."""
        return not math.isfinite(self.end) or self.end > self.start

    def outcome(self) -> str:
        if self.solved_at is not None:
            return f"{self.start:.4g} -> {self.end:.4g} in {self.solved_at} steps"
        if not math.isfinite(self.end):
            return f"{self.start:.4g} -> {self.end} after {len(self.losses)} steps"
        return f"{self.start:.4g} -> {self.end:.4g}" + (" (went up)" if self.end > self.start else "")


def frozen_parameters(module: nn.Module, names: int = 3) -> tuple[float, list[str]]:
    """The fraction of the parameters (by count) with ``requires_grad=False``, and the first few such tensors."""
    total = frozen = 0
    which = []
    for name, p in module.named_parameters():
        total += p.numel()
        if not p.requires_grad:
            frozen += p.numel()
            which.append(name)
    shown = which[:names] + ([f"... {len(which) - names} more"] if len(which) > names else [])
    return (frozen / total if total else 0.0), shown


#: The fewest steps whose curve can show a trend (its last quarter needs 3 points to fit a slope).
MIN_TREND_STEPS = 12


class OverfitBatchCheck(RecipeCheck):
    """Train on one fixed batch with a fresh optimizer; the loss must fall to ``rel_threshold`` of its start.

    The batch is the first ``batch_size`` samples of rank 0's first training batch (the same on every
    rank), trained with dropout off and BatchNorm on the batch's statistics. The optimizer comes from
    ``configure_optimizers``, each param group at the LR the user configured whatever the scheduler
    (:func:`~lightning_tricks.utilities.isolation.configured_lrs`: OneCycle's ``max_lr``, else the LR
    the optimizer was built with), or from ``optimizer=``, a factory taking the parameters; the
    model's weights, buffers, gradients and modes and the RNG are restored afterwards.
    Classification must also reach 100% accuracy on the batch. The loss curves are logged as a figure.

    When the batch does not fit at the configured LR within ``max_steps``, the check retrains from
    the same initial weights at the configured LR times each of ``lr_factors`` (every param group
    alike, ``max_steps`` each), stopping at the first that fits. x10 and x0.1 by default: one decade
    either way covers the usual mis-settings (Adam at 3e-4 where a small conv net wants 3e-3 or
    more; SGD at 0.1 where 0.01 is stable) and costs at most two more budgets, only for a model that
    already failed; more factors would make the check a range test (:class:`LRRangeTest`). A factor
    above 1 is skipped when the loss diverged at the configured LR (a larger step only diverges
    harder), and the higher factors are tried first otherwise. The verdict:

    * **pass**: it fits at the configured LR;
    * **FAIL, LR**: it fits at another LR only ("fits at lr X, not at your lr Y");
    * **FAIL, likely a bug**: it fits at no LR tried and the loss is stuck (flat, or falling too slowly
      to reach the target within ``HORIZON`` budgets); the message lists the likely causes in order;
    * **INCONCLUSIVE**: it fits at no LR tried, but the loss is still falling at a rate that would reach
      the target within ``HORIZON`` budgets; the message says how many steps would decide.

    Args:
        max_steps: the budget of optimizer steps per LR tried.
        batch_size: samples in the batch to overfit (None: the whole loader batch).
        rel_threshold: pass when the loss is below this fraction of its initial value.
        lr_factors: multiples of the configured LR to try when it does not fit (empty: only the configured LR).
        optimizer: factory ``params -> Optimizer`` instead of ``configure_optimizers``.
        seed: seed for dropout etc. inside the check.
    """

    name = "overfit_batch"

    def __init__(
        self,
        max_steps: int = 300,
        batch_size: int | None = 16,
        rel_threshold: float = 0.05,
        lr_factors: Sequence[float] = (10.0, 0.1),
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
        if (
            isinstance(lr_factors, (str, bytes))
            or not isinstance(lr_factors, Sequence)
            or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < math.inf and f != 1
                for f in lr_factors
            )
        ):
            raise ValueError(
                f"OverfitBatchCheck: `lr_factors` must be a list of numbers > 0 other than 1 (multiples of the "
                f"configured LR), got {lr_factors!r}."
            )
        self.max_steps, self.batch_size, self.rel_threshold = max_steps, batch_size, float(rel_threshold)
        self.lr_factors = [float(f) for f in lr_factors]
        self.optimizer, self.seed = optimizer, seed

    def _attempt(self, pl_module: pl.LightningModule, batch: Any, task: str, factor: float) -> Attempt:
        """Train a copy at ``factor`` times the configured LRs until the batch fits or the budget ends."""
        inputs, targets = self.adapter.inputs_targets(pl_module, batch)
        # Exactness (every prediction right) needs the outputs: only on the loss-function route.
        scored = self.adapter.has_loss_function(pl_module)
        with preserved(pl_module, seed=self.seed), torch.enable_grad():
            optimizer = fresh_optimizer(pl_module, self.optimizer, owner="OverfitBatchCheck", lr_factor=factor)
            attempt = Attempt(factor, float(optimizer.param_groups[0]["lr"]), [])
            train_without_dropout(pl_module)
            for step in range(self.max_steps):
                optimizer.zero_grad(set_to_none=True)
                loss = self.adapter.batch_loss(pl_module, batch)
                attempt.losses.append(float(loss.detach()))
                if not math.isfinite(attempt.losses[-1]):
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
                            attempt.exact = fits_exactly(task, outputs, targets)
                        else:
                            final = float(self.adapter.batch_loss(pl_module, batch))
                    if final <= self.rel_threshold * attempt.start and attempt.exact is not False:
                        attempt.solved_at = step + 1
                        attempt.losses.append(final)
                        break
        return attempt

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        (batch,) = shared_batches(trainer, pl_module, 1)
        if self.batch_size is not None:
            batch = take(batch, self.batch_size)
        with preserved(pl_module):
            task = self.adapter.task_of(pl_module, batch)
        targets = self.adapter.inputs_targets(pl_module, batch)[1]
        n = targets.shape[0] if isinstance(targets, torch.Tensor) else len(targets)
        attempts = [self._attempt(pl_module, batch, task, 1.0)]
        if attempts[0].solved_at is None:
            # A larger LR only diverges harder where the configured one diverged; otherwise try it first.
            higher = [] if attempts[0].diverged else sorted(f for f in self.lr_factors if f > 1)
            for factor in higher + sorted((f for f in self.lr_factors if f < 1), reverse=True):
                attempts.append(self._attempt(pl_module, batch, task, factor))
                if attempts[-1].solved_at is not None:
                    break
        result = self._verdict(attempts, n)
        frozen = frozen_parameters(pl_module)
        result.details["frozen_fraction"] = frozen[0]
        if not result.passed and frozen[0] >= 0.5:
            # Evidence that outranks the curves: most of the model cannot learn, whatever the LR.
            result.message = (
                f"{frozen[0]:.0%} of the parameters are frozen (requires_grad=False: {', '.join(frozen[1])}): unless "
                f"that is meant (a pretrained backbone), it is the likely cause. {result.message}"
            )
        return result

    def _verdict(self, attempts: list[Attempt], n: int) -> CheckResult:
        yours, fits = attempts[0], next((a for a in attempts if a.solved_at is not None), None)
        target = self.rel_threshold * yours.start
        details: dict[str, Any] = {
            "steps": yours.solved_at or len(yours.losses),
            "initial_loss": yours.start,
            "batch_size": n,
            "lr": yours.lr,
            "lrs_tried": [a.lr for a in attempts],
            "fits_at_lr": fits.lr if fits is not None else None,
        }
        curves = {f"lr {a.lr:.3g}" + (" (configured)" if a is yours else ""): a.losses for a in attempts}
        figures = {"curve": loss_curve(curves, f"overfit {n} samples")}
        if fits is yours:
            message = f"loss {yours.start:.4g} -> {yours.end:.4g} on {n} samples in {yours.solved_at} steps"
            return CheckResult(self.name, True, message, yours.end, target, details, figures)
        needs = f"needs <= {target:.4g}, {self.rel_threshold:.0%} of the start" + (
            ", and 100% accuracy" if yours.exact is not None else ""
        )
        tried = "; ".join(f"lr {a.lr:.3g}: {a.outcome()}" for a in attempts)
        if fits is not None:
            details["cause"] = "learning rate"
            direction = "low" if fits.lr > yours.lr else "high"
            evidence = (
                "the loss went up or became non-finite"
                if yours.diverged
                else f"the loss fell only to {yours.end / yours.start:.0%} of its start"
            )
            message = (
                f"fits at lr {fits.lr:.3g}, not at your lr {yours.lr:.3g}: {n} samples, {self.max_steps} steps per LR "
                f"({needs}); {tried}. The model can fit the batch: this is a learning-rate problem, not a bug. "
                f"Likely causes, in order: 1. your LR is too {direction} for this model (at lr {yours.lr:.3g} "
                f"{evidence}); set it near {fits.lr:.3g}, or run LRRangeTest to choose it; 2. "
                + (
                    "the optimizer's settings scale the step (momentum, eps, weight decay)."
                    if direction == "high"
                    else "the model's scale makes the LR small for it (an init or normalisation that shrinks "
                    "activations, a global average pool feeding the output), which a larger LR or BatchNorm fixes."
                )
            )
            return CheckResult(self.name, False, message, yours.end, target, details, figures)
        finite = [a for a in attempts if math.isfinite(a.end)]
        best = min(finite, key=lambda a: a.end) if finite else None
        # A configured LR under which the loss rose or blew up is evidence in itself (an LR problem), whatever
        # the lower LRs still had to go; a model stuck at every LR, stable ones included, is what a bug looks like.
        diverges = yours.diverged and math.isfinite(yours.start)
        if diverges or best is None:
            return self._no_fit(attempts, best, diverges, n, needs, tried, target, details, figures)
        if not best.diverged and len(best.losses) < MIN_TREND_STEPS:
            # A handful of steps fits no batch and shows no trend either: nothing to judge the model by.
            details["cause"] = "budget"
            decide = max(300, 10 * self.max_steps)
            message = (
                f"{n} samples fit at no LR tried within {self.max_steps} steps ({needs}): {tried}. So few steps show "
                f"no trend to tell a slow model from a broken one; rerun with max_steps={decide}."
            )
            return CheckResult(self.name, False, message, best.end, target, details, figures, inconclusive=True)
        more = steps_to_reach(best.losses, target) if best is not None and best.exact is not False else math.inf
        if more <= HORIZON * self.max_steps:
            details["cause"] = "budget"
            decide = round_steps(len(best.losses) + more)
            slope = (best.losses[-1] / best.losses[max(0, len(best.losses) - 11)]) - 1
            message = (
                f"{n} samples fit at no LR tried within {self.max_steps} steps ({needs}), but the loss is still "
                f"falling: {tried}. At lr {best.lr:.3g} it fell {-slope:.1%} over the last 10 steps; at that rate it "
                f"reaches {target:.4g} after about {decide} steps. Rerun with max_steps={decide} to decide"
                + (f" (at lr {best.lr:.3g}, the fastest LR tried)." if best is not yours else ".")
            )
            return CheckResult(self.name, False, message, best.end, target, details, figures, inconclusive=True)
        return self._no_fit(attempts, best, diverges, n, needs, tried, target, details, figures)

    def _no_fit(self, attempts, best, diverges, n, needs, tried, target, details, figures) -> CheckResult:
        """FAIL: the batch fits at no LR tried, and no LR tried is still on its way there."""
        details["cause"] = "learning rate" if diverges else "bug"
        verdict = "the learning rate is likely far too high" if diverges else "likely a bug"
        message = (
            f"fits at no LR tried: {verdict}. {n} samples, {self.max_steps} steps per LR ({needs}); {tried}. "
            f"{_no_fit_causes(attempts, best)}"
        )
        return CheckResult(self.name, False, message, attempts[0].end, target, details, figures)


def _no_fit_causes(attempts: list[Attempt], best: Attempt | None) -> str:
    """The likely causes of a batch that fits at no LR tried, in order, from the shape of the curves."""
    yours = attempts[0]
    if not math.isfinite(yours.start):
        return (
            "Likely causes, in order: 1. NaN/Inf in the inputs or targets (the loss is not finite at the first "
            "step); 2. a log or division of zero in the model or loss."
        )
    if yours.diverged:
        lowest = min(a.lr for a in attempts)
        return (
            f"The loss went up or became non-finite at your lr {yours.lr:.3g}"
            + (f" and did not fit at lr {lowest:.3g} either" if lowest < yours.lr else "")
            + f". Likely causes, in order: 1. the learning rate is far too high: try lr {lowest / 10:.3g} or lower, "
            "or run LRRangeTest; 2. targets on another scale than the outputs (unnormalised regression targets), "
            "or a loss that is not bounded below; 3. NaN/Inf produced inside the model (overflow)."
        )
    if best is None or best.end > 0.5 * best.start:
        stuck = "" if best is None else f"at best {best.end / best.start:.0%} of its start, "
        return (
            f"The loss is stuck ({stuck}also at the higher and lower LR). Likely causes, in order: 1. the "
            "outputs are squashed before the loss (a softmax or sigmoid before CrossEntropyLoss or BCEWithLogitsLoss, "
            "which want logits); 2. gradients do not reach the weights (a .detach(), frozen layers, "
            "requires_grad=False, a non-differentiable step); 3. targets the outputs cannot express (the wrong "
            "number of classes, labels out of range, targets on another scale)."
        )
    return (
        f"It learns but stops short: at best {best.end / best.start:.0%} of its start"
        + (", and not every sample is predicted right" if best.exact is False else "")
        + ". Likely causes, in order: 1. too little capacity for the batch (a narrow bottleneck, too much "
        "pooling); 2. regularisation that fights fitting (weight decay, label smoothing, augmentation inside "
        "training_step); 3. samples that cannot be told apart (identical inputs with different labels)."
    )
