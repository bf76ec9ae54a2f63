"""Recipe 2.7: an input-independent baseline — the model must do clearly better on real inputs than on zeros.

After a fixed number of steps a clean model that learns slowly (a recurrent net, a low LR) can still
be behind the zero-input model, which only has to learn the class prior. That is a budget too
small, not evidence: the check follows both validation losses during training, and when the real
model's advantage is still growing it says *inconclusive* and how many steps would decide, instead
of FAIL. A FAIL needs the advantage to have stopped growing short of the margin.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_tricks.callbacks.overfit_batch_check import train_without_dropout
from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, shared_batches, val_loader
from lightning_tricks.functional.loss_trend import HORIZON, mean_shift, round_steps, steps_to_reach
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
    first ``val_batches`` validation batches (zeroed for the baseline) at ``evaluations`` points along
    the way. The real model passes when its final validation loss is below ``(1 - margin)`` times the
    baseline's. Otherwise the *advantage* (baseline's loss minus the real model's, at each point) decides:

    * still growing over the second half, at a rate that reaches the margin within ``HORIZON`` times the
      budget: **inconclusive** (the model uses its inputs but learns slowly), with the steps that would decide;
    * not growing: **FAIL**, with the evidence (the curves) and the likely causes in order: inputs that do
      not reach the output (the two runs coincide), labels misaligned with inputs (the real model fits its
      training batches, and nothing of it carries to validation), or a model that learns nothing from them.

    The baseline is scored with dropout off and BatchNorm on the batch's statistics, as it trained: in
    eval mode, running averages gathered from all-zero batches turn its predictions to noise (a loss of
    17 where the prior gives 2.3 on digits), which would let any model "beat" it. The model and RNG are
    restored afterwards.
    """

    name = "input_independent_baseline"

    def __init__(
        self,
        steps: int = 100,
        train_batches: int = 8,
        val_batches: int = 4,
        margin: float = 0.1,
        evaluations: int = 10,
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
        for arg, value in (
            ("steps", steps),
            ("train_batches", train_batches),
            ("val_batches", val_batches),
            ("evaluations", evaluations),
        ):
            check_int(value, arg, owner="InputIndependentBaseline")
        if not isinstance(margin, (int, float)) or not 0 <= margin < 1:
            raise ValueError(f"InputIndependentBaseline: `margin` must be a number in [0, 1), got {margin!r}.")
        self.steps, self.train_batches, self.val_batches = steps, train_batches, val_batches
        self.margin, self.evaluations, self.optimizer, self.seed = float(margin), evaluations, optimizer, seed

    def _score(self, pl_module, val, prepare) -> float:
        with torch.no_grad():
            if prepare is None:
                pl_module.eval()
            else:
                train_without_dropout(pl_module)  # see the class docstring: BatchNorm on the zero batch's statistics
            scores = [float(self.adapter.batch_loss(pl_module, batch, prepare)) for batch in val]
        pl_module.train()
        return sum(scores) / len(scores)

    def _train_and_score(self, pl_module, train, val, zero: bool) -> tuple[list[float], list[float]]:
        """The training loss of every step, and the validation loss at the evaluation points (the last at the end)."""
        prepare = zeros_like_inputs if zero else None
        every = max(1, self.steps // self.evaluations)
        curve, scores = [], []
        with preserved(pl_module, seed=self.seed), torch.enable_grad():
            optimizer = fresh_optimizer(pl_module, self.optimizer, owner="InputIndependentBaseline")
            pl_module.train()
            for step in range(self.steps):
                optimizer.zero_grad(set_to_none=True)
                loss = self.adapter.batch_loss(pl_module, train[step % len(train)], prepare)
                curve.append(float(loss.detach()))
                loss.backward()
                optimizer.step()
                if (step + 1) % every == 0 or step == self.steps - 1:
                    scores.append(self._score(pl_module, val, prepare))
        return curve, scores

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        train = shared_batches(trainer, pl_module, self.train_batches)
        val = shared_batches(trainer, pl_module, self.val_batches, val_loader(trainer, pl_module))
        real_curve, real_scores = self._train_and_score(pl_module, train, val, zero=False)
        zero_curve, zero_scores = self._train_and_score(pl_module, train, val, zero=True)
        real, zero = real_scores[-1], zero_scores[-1]
        details = {"real_val_loss": real, "zero_input_val_loss": zero, "steps": self.steps, "margin": self.margin}
        figures = {
            "curves": loss_curve({"real inputs": real_curve, "zeroed inputs": zero_curve}, "input-independent baseline")
        }
        bound = (1 - self.margin) * zero
        head = f"val loss {real:.4g} on real inputs vs {zero:.4g} on zeroed inputs after {self.steps} steps"
        if real < bound:
            return CheckResult(self.name, True, head, real, bound, details, figures)
        # The advantage must reach margin * zero; follow the shortfall (bound - real), which falls to 0 there.
        every = max(1, self.steps // self.evaluations)
        shortfall = [r - (1 - self.margin) * z for r, z in zip(real_scores, zero_scores, strict=True)]
        more = steps_to_reach(shortfall[len(shortfall) // 2 :], 0.0, tail=1.0, log=False, spacing=every)
        details["steps_to_decide"] = more
        if math.isfinite(real) and more <= HORIZON * self.steps:
            decide = round_steps(self.steps + more)
            middle = len(real_scores) // 2
            message = (
                f"{head}: not yet clearly better (needs < {bound:.4g}), but the real model is still catching up: its "
                f"lead over the zero-input model grew from {zero_scores[middle] - real_scores[middle]:+.3g} to "
                f"{zero - real:+.3g} over the second half (it needs {self.margin * zero:+.3g}). At that rate it gets "
                f"there after about {decide} steps: rerun with steps={decide} to decide, or raise the LR if it is low."
            )
            return CheckResult(self.name, False, message, real, bound, details, figures, inconclusive=True)
        if not math.isfinite(real):
            message = (
                f"{head}; the loss on real inputs is not finite. Likely causes, in order: 1. NaN/Inf in the inputs; "
                "2. a learning rate that diverges."
            )
            return CheckResult(self.name, False, message, real, bound, details, figures)
        if all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(real_curve, zero_curve, strict=True)):
            message = (
                f"{head}; the two runs are the same step for step: the output does not depend on the inputs. Likely "
                "causes, in order: 1. the inputs never reach the output (a wrong variable after a refactor, a "
                "multiplication by zero, a detached or overwritten tensor); 2. inputs replaced before the model (a "
                "transform returning constants)."
            )
            return CheckResult(self.name, False, message, real, bound, details, figures)
        # Both runs see the same batches in the same order: compare them batch by batch over the last fifth.
        k = max(2, self.steps // 5)
        lead, noise = mean_shift(zero_curve[-k:], real_curve[-k:], paired=True)
        details["train_lead"] = lead
        train = f"training loss {sum(real_curve[-k:]) / k:.4g} vs {sum(zero_curve[-k:]) / k:.4g} with zeroed inputs"
        if lead > 3 * noise:
            message = (
                f"{head}; the model does not do clearly better with its inputs (needs < {bound:.4g}) and its lead "
                f"stopped growing, although on its training batches it did learn from them ({train}, over the last "
                f"{k} steps): what it learns does not carry to validation. Likely causes, in order: 1. labels "
                "misaligned with inputs (shifted by one, shuffled separately from the inputs); 2. validation data "
                "prepared differently from training data (normalisation, channel order); 3. too few training samples "
                f"for this model to generalise from ({self.train_batches} batches: raise train_batches)."
            )
            return CheckResult(self.name, False, message, real, bound, details, figures)
        # Nothing learned from the inputs, not even on the training batches: a model still on its initial
        # plateau looks the same as one whose labels are unrelated to its inputs. Only more steps tell.
        decide = round_steps(4 * self.steps)
        message = (
            f"{head}: in {self.steps} steps the model learned nothing from its inputs, not even on its training "
            f"batches ({train}, within noise), so a slow start cannot be told from labels unrelated to the inputs. "
            f"Rerun with steps={decide}, or a higher LR, to decide."
        )
        return CheckResult(self.name, False, message, real, bound, details, figures, inconclusive=True)
