"""Stop a hyper-parameter trial early when its validation metric is hopeless (Optuna pruning).

At the end of every validation during ``fit``, rank zero reports the monitored metric to the Optuna
trial and asks the study's pruner; the answer is broadcast, so every DDP rank stops at the same
epoch. The callback stops the run through ``trainer.should_stop`` (the run ends cleanly: loggers
closed, checkpoints written) and records ``pruned_at`` on the trial; ``lightning-tricks tune`` then
marks the trial pruned. A non-finite metric stops the run the same way and is recorded as
``diverged_at``, so a NaN trial fails fast instead of training to the end.

The trial comes from, in order: the ``trial`` argument (Python), a trial registered in this process
by ``tune`` (:func:`live_trial`), or the study in ``storage`` (default: the environment variable
``LIGHTNING_TRICKS_OPTUNA_STORAGE``, so a database password never lands in a logged config) by
``study_name`` and ``trial_id`` — how a ``train`` subprocess of ``tune`` (a DDP trial) finds it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

if TYPE_CHECKING:
    import optuna

STORAGE_ENV = "LIGHTNING_TRICKS_OPTUNA_STORAGE"

# Trials `tune` runs in this process, by (study name, trial id): train() instantiates the callback from
# the config, which cannot hold a Trial object.
_LIVE_TRIALS: dict[tuple[str, int], optuna.Trial] = {}


@contextlib.contextmanager
def live_trial(trial: optuna.Trial) -> Iterator[None]:
    """Make ``trial`` findable by ``OptunaPruning(study_name=..., trial_id=...)`` in this process."""
    key = (trial.study.study_name, trial._trial_id)
    _LIVE_TRIALS[key] = trial
    try:
        yield
    finally:
        _LIVE_TRIALS.pop(key, None)


class OptunaPruning(Callback):
    """Report ``monitor`` to an Optuna trial after each validation; stop the run when the pruner says so.

    Args:
        monitor: the logged validation metric to report (e.g. ``"val/loss"``, ``"val/acc"``); which
            direction is better is the study's.
        trial: the trial to report to (Python use). Otherwise ``study_name`` and ``trial_id`` name it.
        study_name: the study holding the trial.
        trial_id: the trial's storage id (``trial._trial_id``, not its number).
        storage: the study's storage URL; default the environment variable
            ``LIGHTNING_TRICKS_OPTUNA_STORAGE``.
        pruner: the study's pruner, when the trial is loaded from ``storage`` (a study loaded from a
            database does not remember its pruner; Optuna's default is ``MedianPruner()``).

    After fit: ``pruned`` (bool), ``diverged`` (bool), ``stopped_at`` (validation index or None) and
    ``reported`` (the ``(step, value)`` pairs sent to Optuna, rank zero).
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        trial: optuna.Trial | None = None,
        study_name: str | None = None,
        trial_id: int | None = None,
        storage: str | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the name of a logged metric, got {monitor!r}.")
        if trial is None and (study_name is None or trial_id is None):
            raise ValueError("OptunaPruning needs `trial`, or `study_name` and `trial_id` to find it.")
        if trial_id is not None and (isinstance(trial_id, bool) or not isinstance(trial_id, int)):
            raise ValueError(f"`trial_id` must be an integer trial id, got {trial_id!r}.")
        self.monitor = monitor
        self.study_name = study_name
        self.trial_id = trial_id
        self.storage = storage
        self.pruner = pruner
        self._trial = trial
        self.pruned = False
        self.diverged = False
        self.stopped_at: int | None = None
        self.reported: list[tuple[int, float]] = []
        self._step = 0

    def _resolve_trial(self) -> optuna.Trial:
        if self._trial is not None:
            return self._trial
        live = _LIVE_TRIALS.get((self.study_name, self.trial_id))
        if live is not None:
            return live
        import optuna

        storage = self.storage or os.environ.get(STORAGE_ENV)
        if not storage:
            raise ValueError(
                f"OptunaPruning: trial {self.trial_id} of study {self.study_name!r} is not running in this "
                f"process; give `storage` or set {STORAGE_ENV} to the study's database URL."
            )
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner)
        return optuna.trial.Trial(study, self.trial_id)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            self._trial = self._resolve_trial()  # fail now, not after the first epoch

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self.stopped_at is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:  # the same keys on every rank: all raise together
            available = sorted(k for k in trainer.callback_metrics if not k.startswith("train"))
            raise ValueError(
                f"OptunaPruning: `monitor={self.monitor!r}` was not logged at validation; logged: {available}."
            )
        step, self._step = self._step, self._step + 1
        decision = None
        if trainer.is_global_zero:
            decision = self._judge(float(value), step)
        decision = trainer.strategy.broadcast(decision, src=0)
        if decision is not None:
            trainer.should_stop = True
            self.stopped_at = step
            self.pruned = decision == "pruned"
            self.diverged = decision == "diverged"

    def _judge(self, value: float, step: int) -> str | None:
        trial = self._trial
        if not math.isfinite(value):
            trial.set_user_attr("diverged_at", step)
            return "diverged"
        trial.report(value, step)
        self.reported.append((step, value))
        if trial.should_prune():
            trial.set_user_attr("pruned_at", step)
            return "pruned"
        return None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and (self.study_name is not None or self.storage is not None):
            self._trial = None  # never pickle a storage connection into a checkpoint or a copy

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_trial"] = None
        return state
