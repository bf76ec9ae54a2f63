"""Recipe 3.7: scale the learning rate with the effective global batch size (linear or sqrt rule).

An LR tuned at batch ``B_ref`` is multiplied by ``B / B_ref`` (linear, Goyal et al. 2017) or by
``sqrt(B / B_ref)`` (Krizhevsky 2014, Hoffer et al. 2017), where ``B`` is what one optimizer step
really averages: per-device batch x processes x accumulated batches. Going from one GPU to eight,
or adding gradient accumulation, then keeps the LR right without editing the config.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_tricks.functional.lr_scaling import (
    check_rule,
    effective_batch_size,
    lr_scale_factor,
    scale_optimizer_lr,
    scaling_warmup_factor,
)
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.media import log_scalars
from lightning_tricks.utilities.state_keys import StatefulCallback


def loader_batch_size(loader: Any) -> int | None:
    """The batch size of a DataLoader (its ``batch_size``, else its batch sampler's), or None if it has none."""
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def scale_trainer_lr(trainer: pl.Trainer, factor: float) -> list[list[float]]:
    """Multiply every LR of every optimizer of the run by ``factor``; its schedulers follow. New LRs per optimizer."""
    schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
    return [scale_optimizer_lr(optimizer, factor, schedulers) for optimizer in trainer.optimizers]


class LRBatchScaling(StatefulCallback):
    """Multiply the LR by ``B / B_ref`` (or its square root) once, at the start of a fresh fit.

    ``B`` is the effective global batch size: per-device batch (read from the training loader, or
    ``batch_size=``) x ``trainer.world_size`` x ``trainer.accumulate_grad_batches``. Every param
    group of every optimizer is scaled (their ratios kept), and the schedulers' ``base_lrs`` and the
    groups' ``initial_lr`` with them, so a scheduler follows the scaled LR. A resumed run is left
    alone: its optimizer checkpoint already holds the scaled LR (``factor`` comes back from the
    callback's state).

    With ``warmup_steps`` > 0 the LR used ramps linearly from the unscaled LR to the scaled one over
    the first ``warmup_steps`` optimizer steps (Goyal et al.), on top of whatever the user's
    scheduler does; a resumed run continues the ramp where it stopped. The param groups (what
    schedulers and ``LearningRateMonitor`` read) keep the scheduler's LR; the warmup factor applies
    inside ``optimizer.step()`` only.

    Args:
        reference_batch_size: the (effective) batch size the optimizer's LR was tuned at.
        rule: ``"linear"`` or ``"sqrt"``.
        warmup_steps: optimizer steps of linear warmup (0: none).
        batch_size: the per-device batch size, for training loaders that do not expose one
            (multiple loaders, an iterable data set that batches itself).

    After it ran, ``factor``, ``effective_batch_size`` and ``lrs`` (per optimizer) hold what it did.
    """

    def __init__(
        self,
        reference_batch_size: int,
        rule: str = "linear",
        warmup_steps: int = 0,
        batch_size: int | None = None,
    ) -> None:
        self.reference_batch_size = check_int(reference_batch_size, "reference_batch_size", owner="LRBatchScaling")
        self.rule = check_rule(rule, owner="LRBatchScaling")
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=0, owner="LRBatchScaling")
        self.batch_size = check_int(batch_size, "batch_size", owner="LRBatchScaling", allow_none=True)
        self.factor: float | None = None
        self.effective_batch_size: int | None = None
        self.lrs: list[list[float]] = []
        self._pending = False
        self._trainer: pl.Trainer | None = None
        self._hooks: list[RemovableHandle] = []
        self._unwarmed: dict[int, list[Any]] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            # Forget a previous fit's factor: a resumed fit gets it back from its checkpoint (loaded after setup).
            self._pending, self.factor, self.effective_batch_size = True, None, None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_train_start, not on_fit_start: the optimizers exist and, on resume, their checkpointed state
        # (the scaled LR) is already loaded; the training loader is built, so its batch size can be read.
        if not self._pending:
            return
        self._pending = False
        if trainer.ckpt_path is None:
            self.apply(trainer)
        elif self.factor is None:
            rank_zero_warn(
                "LRBatchScaling: resumed from a checkpoint without LRBatchScaling state; the LR is left as the "
                "checkpoint has it (not scaled, no warmup)."
            )
        else:
            rank_zero_info(f"LRBatchScaling: resumed run; the checkpoint's LR is already scaled by {self.factor:.4g}.")
        if (
            self.warmup_steps
            and self.factor is not None
            and self.factor > 1
            and trainer.global_step < self.warmup_steps
        ):
            self._add_warmup_hooks(trainer)

    def apply(self, trainer: pl.Trainer) -> float:
        """Scale the LRs of the run's optimizers by the factor for its effective batch size; return the factor."""
        # An LRRangeTest(apply=True) says so with `sets_lr` (this module does not import that one, which
        # imports this one for `scale_trainer_lr`).
        if any(getattr(c, "sets_lr", False) for c in trainer.callbacks):
            # The range test sweeps at this run's own effective batch size: its LR needs no scaling, and
            # scaling it (or being overwritten by it) depending on the callbacks' order would be a trap.
            rank_zero_warn(
                "LRBatchScaling: LRRangeTest(apply=True) sets this run's LR from a sweep at its own batch size; "
                "the LR is not scaled again (factor 1). Remove one of the two to silence this."
            )
            self.factor, self.lrs = 1.0, [[float(g["lr"]) for g in o.param_groups] for o in trainer.optimizers]
            return 1.0
        per_device = self.batch_size or loader_batch_size(trainer.train_dataloader)
        if per_device is None:
            raise ValueError(
                f"LRBatchScaling: cannot read the per-device batch size from the training loader "
                f"({type(trainer.train_dataloader).__name__}: no `batch_size`, no batch sampler with one); pass "
                f"`batch_size=` (the per-device batch size)."
            )
        batch = effective_batch_size(per_device, trainer.world_size, trainer.accumulate_grad_batches)
        factor = lr_scale_factor(batch, self.reference_batch_size, self.rule)
        self.lrs = scale_trainer_lr(trainer, factor)
        self.factor, self.effective_batch_size = factor, batch
        first_lr = self.lrs[0][0] if self.lrs and self.lrs[0] else float("nan")
        rank_zero_info(
            f"LRBatchScaling: effective batch {batch} = {per_device} per device x {trainer.world_size} processes x "
            f"{trainer.accumulate_grad_batches} accumulated; {self.rule} rule against {self.reference_batch_size}: "
            f"LR x {factor:.4g} (first group now {first_lr:.4g})"
            + (f", warmed up over {self.warmup_steps} steps." if self.warmup_steps and factor > 1 else ".")
        )
        log_scalars(
            trainer,
            {
                "tricks/lr_scaling/factor": factor,
                "tricks/lr_scaling/effective_batch_size": batch,
                "tricks/lr_scaling/lr": first_lr,
            },
        )
        return factor

    # Warmup without fighting the user's scheduler: the LR a scheduler sets (and reads back, for
    # chainable ones like StepLR) stays the *scaled* one in the param groups; only while
    # `optimizer.step()` runs is it multiplied by the warmup factor (pre-hook) and then restored
    # exactly (post-hook). The step therefore uses scheduler LR x warmup factor, whatever the
    # scheduler is, and the position comes from `trainer.global_step`, which a resumed run restores.

    def _add_warmup_hooks(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        for optimizer in trainer.optimizers:
            self._hooks.append(optimizer.register_step_pre_hook(self._warm))
            self._hooks.append(optimizer.register_step_post_hook(self._unwarm))

    def _warm(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        assert self._trainer is not None and self.factor is not None
        scale = scaling_warmup_factor(self._trainer.global_step, self.warmup_steps, self.factor)
        if scale == 1.0:
            return
        self._unwarmed[id(optimizer)] = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * scale

    def _unwarm(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group, lr in zip(optimizer.param_groups, self._unwarmed.pop(id(optimizer), []), strict=False):
            group["lr"] = lr

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._unwarmed.clear()
        self._trainer = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._hooks and trainer.global_step >= self.warmup_steps:
            self._remove_hooks()  # warmup done: no per-step cost from here on

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    @property
    @override
    def state_key(self) -> str:
        # The arguments the scaling factor in the state depends on.
        return self._generate_state_key(
            reference_batch_size=self.reference_batch_size, rule=self.rule, batch_size=self.batch_size
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "effective_batch_size": self.effective_batch_size,
            "rule": self.rule,
            "reference_batch_size": self.reference_batch_size,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.factor = state_dict.get("factor")
        self.effective_batch_size = state_dict.get("effective_batch_size")
