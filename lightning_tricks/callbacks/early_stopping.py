"""Recipe 5 (regularise): early stopping that ends with the best epoch's weights, and decides alike on every rank."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_tricks.utilities.media import log_scalars


class EarlyStopping(LightningEarlyStopping):
    """Lightning's ``EarlyStopping``, plus ``restore_best_weights`` and a rank-consistent monitored value.

    * **Best weights, in memory.** When the monitored value improves, a CPU copy of the module's
      ``state_dict()`` is taken; at the end of fit it is loaded back (``restore_best_weights=True``).
      In memory rather than from a best checkpoint: it does not depend on a ``ModelCheckpoint`` being
      configured with the same monitor/mode (or at all), it is exact (the weights the check saw, the
      same a ``ModelCheckpoint(monitor=..., save_top_k=1)`` saves that epoch), and it reads no file.
      Cost: one extra copy of the parameters and buffers in host RAM per rank (4 bytes per float32
      value: 400 MB for 100M parameters) and one device-to-host copy per improvement.
    * **Rank-consistent.** Lightning reads ``trainer.callback_metrics[monitor]``, which under DDP is
      rank-local when the value was logged without ``sync_dist=True``: ranks then disagree on the
      best score and on when patience ran out (Lightning stops all ranks when *any* does, so the stop
      epoch is the earliest rank's). Here the value is gathered from every rank; if the ranks differ,
      their mean is what every rank evaluates (with a one-time warning), so all take the same decision.
    * **Checkpoint-correct.** ``state_dict`` adds the best epoch and the best weights (a plain dict of
      CPU tensors, loadable with ``torch.load(weights_only=True)``) to Lightning's patience counter
      and best score, so a resumed run keeps them.

    Args:
        restore_best_weights: load the best epoch's weights at the end of fit.
        monitor, min_delta, patience, ...: Lightning's ``EarlyStopping`` arguments, unchanged.

    After fit: ``best_epoch`` (None if the monitor never improved), ``stopped_epoch`` (0 if it did
    not stop), ``stopping_reason`` / ``stopping_reason_message`` (Lightning's), ``restored``.
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        restore_best_weights: bool = True,
    ) -> None:
        if not isinstance(restore_best_weights, bool):
            raise ValueError(
                f"EarlyStopping: `restore_best_weights` must be True or False, got {restore_best_weights!r}."
            )
        # Lightning's arguments in Lightning's order (a drop-in: positional calls keep working); it checks them.
        super().__init__(
            monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.restore_best_weights = restore_best_weights
        self.best_epoch: int | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self.restored = False
        self._trainer: pl.Trainer | None = None
        self._warned_rank_local = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Lightning hands the monitored value to `_evaluate_stopping_criteria(current)` and nowhere else
        # (no public hook sees it before the decision). Overriding that method is the smallest change;
        # `_run_early_stopping_check(trainer)` would mean copying Lightning's logic, and mutating
        # `trainer.callback_metrics` would change what other callbacks (ModelCheckpoint) see. If a
        # Lightning release renames it, fail here rather than silently evaluate rank-local values.
        if not callable(getattr(LightningEarlyStopping, "_evaluate_stopping_criteria", None)):
            raise RuntimeError(
                "EarlyStopping: this Lightning version has no `EarlyStopping._evaluate_stopping_criteria`; "
                "lightning_tricks.EarlyStopping needs updating for it."
            )
        self._trainer = trainer
        if stage == "fit":
            self.restored = False

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = None

    @override
    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            current = self._rank_consistent(trainer, current)
        before = self.best_score
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        # Lightning assigns `best_score` only on an improvement: that is when the weights are worth keeping.
        if self.best_score is not before and trainer is not None:
            self.best_epoch = trainer.current_epoch
            if self.restore_best_weights:
                self.best_weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in trainer.lightning_module.state_dict().items()
                }
        return should_stop, reason

    def _rank_consistent(self, trainer: pl.Trainer, current: Tensor) -> Tensor:
        """The same value on every rank: ``current`` if all ranks agree (exact), else the ranks' mean.

        A collective: every rank reaches it, since Lightning evaluates the criteria on every rank.
        """
        # A copy on the strategy's device (NCCL needs it there; gather must not touch callback_metrics' tensor).
        local = current.detach().to(device=trainer.strategy.root_device, dtype=torch.float64, copy=True)
        values = trainer.strategy.all_gather(local).reshape(-1)
        if bool((values == values[0]).all()):
            return current
        if not self._warned_rank_local:
            self._warned_rank_local = True
            rank_zero_warn(
                f"EarlyStopping: `{self.monitor}` differs across ranks ({values.tolist()}; logged without "
                f"`sync_dist=True`?). Using the mean over ranks, so every rank stops at the same epoch."
            )
        return values.mean().to(device=current.device, dtype=current.dtype)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Log here, not at fit end: the loggers are finalized before `on_fit_end`.
        reason = self.stopping_reason_message or "did not stop early (training ended first)."
        rank_zero_info(f"EarlyStopping: {reason} Best `{self.monitor}` at epoch {self.best_epoch}.")
        values = {"tricks/early_stopping/stopped_epoch": self.stopped_epoch}
        if self.best_epoch is not None:
            values["tricks/early_stopping/best_epoch"] = self.best_epoch
        log_scalars(trainer, values)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Restore at fit end, after ModelCheckpoint's `on_train_end` may have written `last.ckpt`: that file
        # must hold the last epoch's weights, or a resumed run would continue from the best ones.
        if not self.restore_best_weights or self.best_weights is None:
            return
        pl_module.load_state_dict(self.best_weights)
        self.restored = True
        rank_zero_info(f"EarlyStopping: restored the weights of epoch {self.best_epoch} (best `{self.monitor}`).")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_epoch": self.best_epoch, "best_weights": self.best_weights}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self.best_weights = state_dict.get("best_weights")
