"""Recipe 2.9: once training starts, the loss must be finite and falling over the first steps."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck
from lightning_tricks.functional.loss_trend import mean_shift
from lightning_tricks.utilities.arguments import check_int


class TrainingHealthCheck(RecipeCheck):
    """Watch the first ``window`` training steps: every loss finite, none ``blowup`` times the first, and falling.

    Verdicts at the end of the window: **pass** when the last fifth's mean is below ``(1 - min_decrease)``
    times the first fifth's; **FAIL** when it rose by more than the noise (3 standard errors of the
    two means) and by more than ``min_decrease``; otherwise **inconclusive**: a loss that has not moved
    beyond its noise in the first steps (a low LR, a bias already at the prior, a warmup) is not
    evidence of a problem, and the message suggests a longer window. A non-finite loss, or one above
    ``blowup`` times the first, fails at once.

    The loss is what ``training_step`` returned (the tensor, or the ``"loss"`` entry; not Lightning's
    copy divided by ``accumulate_grad_batches``), one per training batch, averaged over ranks every
    step of the window, so every rank reaches the same verdict at the same step. A
    non-finite loss fails at once, naming the step and value. Defaults to ``on_failure="warn"``:
    the run goes on, but you are told.

    Args:
        window: number of steps watched from the start of training.
        min_decrease: the last fifth's mean must be below ``(1 - min_decrease)`` times the first fifth's.
        blowup: a loss above ``blowup`` times the first step's is divergence, even if it comes back down.
    """

    name = "training_health"

    def __init__(
        self,
        window: int = 50,
        min_decrease: float = 0.01,
        blowup: float = 10.0,
        on_failure: str = "warn",
        run_on_resume: bool = False,
    ) -> None:
        super().__init__(on_failure, run_on_resume)
        check_int(window, "window", minimum=5, owner="TrainingHealthCheck")
        if not isinstance(min_decrease, (int, float)) or not 0 <= min_decrease < 1:
            raise ValueError(f"TrainingHealthCheck: `min_decrease` must be a number in [0, 1), got {min_decrease!r}.")
        if not isinstance(blowup, (int, float)) or not blowup > 1:
            raise ValueError(f"TrainingHealthCheck: `blowup` must be a number > 1, got {blowup!r}.")
        self.window, self.min_decrease, self.blowup = window, float(min_decrease), float(blowup)
        self.losses: list[float] = []
        self._active = False

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.losses, self.result = [], None
        self._active = trainer.ckpt_path is None or self.run_on_resume

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach().float()
        if pl_module.automatic_optimization:
            # Lightning hands callbacks the loss divided by accumulate_grad_batches (what it back-propagates);
            # the check judges what training_step returned (exact for a power-of-two factor, else to rounding).
            loss = loss * trainer.accumulate_grad_batches
        value = float(trainer.strategy.reduce(loss, reduce_op="mean"))
        self.losses.append(value)
        step = trainer.global_step
        details = {"steps_watched": len(self.losses)}
        if not math.isfinite(value):
            self._active = False
            message = (
                f"the training loss is {value} at step {step}: the learning rate may be too high, or the "
                f"inputs/targets hold NaN/Inf (mixed precision overflow is another cause)."
            )
            self.finish(trainer, CheckResult(self.name, False, message, value, None, details))
            return
        if value > self.blowup * self.losses[0]:
            self._active = False
            message = (
                f"the training loss jumped to {value:.4g} at step {step}, {value / self.losses[0]:.3g}x its first "
                f"value {self.losses[0]:.4g}: training is diverging (the learning rate is too high)."
            )
            self.finish(trainer, CheckResult(self.name, False, message, value, self.blowup * self.losses[0], details))
            return
        if len(self.losses) < self.window:
            return
        self._active = False
        fifth = max(1, self.window // 5)
        head_losses, tail_losses = self.losses[:fifth], self.losses[-fifth:]
        first, last = sum(head_losses) / fifth, sum(tail_losses) / fifth
        bound = (1 - self.min_decrease) * first
        # Minibatch losses scatter: a change smaller than ~3 standard errors of the two means is noise.
        drop, noise = mean_shift(head_losses, tail_losses)
        if fifth < 3:  # too few values per fifth for their own spread: take the whole window's
            mean = sum(self.losses) / len(self.losses)
            spread = math.sqrt(sum((v - mean) ** 2 for v in self.losses) / (len(self.losses) - 1))
            noise = spread * math.sqrt(2 / fifth)
        details.update(first_mean=first, last_mean=last, noise=noise)
        head = f"training loss {first:.4g} -> {last:.4g} over the first {self.window} steps"
        if last < bound:
            self.finish(trainer, CheckResult(self.name, True, head, last, bound, details))
        elif -drop > max(3 * noise, self.min_decrease * first):
            message = (
                f"{head}: rising, by {-drop:.3g} (more than 3 standard errors, {3 * noise:.3g}, of the noise between "
                f"steps). Likely causes, in order: 1. the learning rate is too high (the loss oscillates upward); "
                f"2. a warmup or schedule that raises the LR too fast; 3. data whose later batches are harder (an "
                f"unshuffled loader sorted by difficulty or class)."
            )
            self.finish(trainer, CheckResult(self.name, False, message, last, bound, details))
        else:
            # A flat start is normal (a low LR, a bias set to the prior, a warmup): not evidence of a problem.
            message = (
                f"{head}: no clear change yet (needs < {bound:.4g}; the two means differ by {-drop:+.3g}, within the "
                f"noise of {3 * noise:.3g}, 3 standard errors). Watch a longer window (window={4 * self.window}) "
                f"to decide; the overfit-one-batch check tells whether the model can learn at all."
            )
            self.finish(trainer, CheckResult(self.name, False, message, last, bound, details, inconclusive=True))
