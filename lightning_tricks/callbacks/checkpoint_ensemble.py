"""Recipe 6: at test time, average the predictions of several checkpoints and compare with each member.

By default the members are the run's top-k checkpoints (``ModelCheckpoint(save_top_k=k)``), as they
were when ``fit`` ended; or any checkpoints (paths or globs), e.g. the best checkpoint of each seed of
a Hydra multirun. Members are copies of the model loaded with ``torch.load(weights_only=True)`` and
``strict=True`` (see :mod:`lightning_tricks.ensembling`); the model under test is never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_tricks.ensembling import (
    CheckpointError,
    EnsembleReport,
    MemberFailure,
    ensemble_sums,
    expand_checkpoints,
    load_members,
    no_member_message,
)
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.isolation import evaluating
from lightning_tricks.utilities.loaders import user_loader
from lightning_tricks.utilities.media import log_table
from lightning_tricks.utilities.precision import run_precision, to_model
from lightning_tricks.utilities.protocol import ModelAdapter
from lightning_tricks.utilities.sharding import shard

ON_FAILURE = ("raise", "warn", "ignore")


class CheckpointEnsemble(Callback):
    """Evaluate an ensemble of checkpoints and each of its members on the test set, after ``trainer.test``.

    Logs ``test/ensemble_loss`` (NLL of the mean predicted probabilities; MSE for regression),
    ``test/ensemble_acc`` (``_mae`` for regression), the best member's numbers
    (``test/ensemble_best_member_*``), the gain over it and the number of members, through
    ``LightningModule.log`` (so they are in ``trainer.test()``'s results), and a table member -> loss,
    metric (W&B table, TensorBoard text or CSV). ``report`` holds the last
    :class:`~lightning_tricks.ensembling.EnsembleReport`.

    Under DDP every rank evaluates an exact, unpadded share of the test set and one all-reduce sums
    the results, so the numbers are those of one process and identical on all ranks.

    Args:
        checkpoints: paths or globs of the members; None: the Trainer's ``ModelCheckpoint`` top-k.
        top_k: use only the best ``top_k`` of the ``ModelCheckpoint``'s kept checkpoints (None: all of them).
        on_failure: a checkpoint that cannot be loaded (missing, corrupted, unsafe, another
            architecture) — ``"raise"`` a :class:`~lightning_tricks.ensembling.CheckpointError`;
            ``"warn"`` / ``"ignore"``: leave it out (listed in ``report.failures``) and evaluate the others.
        split_batch, task: overrides of the model protocol.
    """

    def __init__(
        self,
        checkpoints: str | Sequence[str] | None = None,
        top_k: int | None = None,
        on_failure: str = "warn",
        split_batch: Any = None,
        task: str | None = None,
    ) -> None:
        if checkpoints is not None and top_k is not None:
            raise ValueError(
                "CheckpointEnsemble: give `checkpoints` (explicit members) or `top_k` (of the run's "
                f"ModelCheckpoint), not both; got checkpoints={checkpoints!r}, top_k={top_k!r}."
            )
        if on_failure not in ON_FAILURE:
            raise ValueError(f"CheckpointEnsemble: `on_failure` must be one of {ON_FAILURE}, got {on_failure!r}.")
        if checkpoints is not None and not isinstance(checkpoints, str):
            checkpoints = [str(c) for c in checkpoints]
            if not checkpoints:
                raise ValueError("CheckpointEnsemble: `checkpoints` is empty; give paths/globs or None for the top-k.")
        self.checkpoints = checkpoints
        self.top_k = check_int(top_k, "top_k", owner="CheckpointEnsemble", allow_none=True)
        self.on_failure = on_failure
        self.adapter = ModelAdapter(split_batch=split_batch, task=task)
        self.report: EnsembleReport | None = None
        self._fit_members: list[str] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.checkpoints is None and not isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            raise ValueError(
                "CheckpointEnsemble: no `checkpoints` were given and the Trainer has no ModelCheckpoint to take "
                "the top-k from; add ModelCheckpoint(save_top_k=k, monitor=...) or pass `checkpoints=`."
            )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Remember the final top-k now: test(ckpt_path="best") restores the ModelCheckpoint's state from
        # the best checkpoint, whose list of best models is the one of its (earlier) epoch.
        if self.checkpoints is None:
            self._fit_members = self._top_k(trainer.checkpoint_callback)

    def _top_k(self, checkpoint: Any) -> list[str]:
        if not isinstance(checkpoint, ModelCheckpoint):
            return []
        scored = {p: s for p, s in checkpoint.best_k_models.items() if s is not None}
        if scored:
            descending = checkpoint.mode == "max"
            paths = sorted(scored, key=lambda p: float(scored[p]), reverse=descending)
        else:  # no monitor: ModelCheckpoint keeps only its latest as best_model_path
            paths = [checkpoint.best_model_path] if checkpoint.best_model_path else []
        return paths[: self.top_k] if self.top_k is not None else paths

    def members(self, trainer: pl.Trainer) -> list[str]:
        """The member checkpoints' paths, identical on every rank (rank zero's list)."""
        if self.checkpoints is not None:
            paths = expand_checkpoints(self.checkpoints)  # on every rank: a bad glob fails on all, no hang
        elif self._fit_members is not None:
            paths = list(self._fit_members)
        else:
            paths = self._top_k(trainer.checkpoint_callback)
        return list(trainer.strategy.broadcast(paths, src=0))

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        paths = self.members(trainer)
        if not paths:
            self._fail(CheckpointError("(none)", "no checkpoints to ensemble: the ModelCheckpoint kept none yet"))
            return
        loaded, failures = load_members(paths, pl_module)
        loaded, failures = self._agree(trainer, pl_module, paths, loaded, failures)
        for failure in failures:
            self._fail(CheckpointError(failure.path, failure.reason), final=False)
        if not loaded:
            self._fail(CheckpointError(", ".join(paths), no_member_message(failures)))
            return
        report = self.evaluate(trainer, pl_module, loaded, failures)
        if report is None:
            return
        self.report = report
        for key, value in report.scalars().items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True)
        log_table(trainer, "test/ensemble_members", report.columns, report.rows())

    def _agree(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        paths: list[str],
        loaded: list[tuple[str, Any]],
        failures: list[MemberFailure],
    ) -> tuple[list[tuple[str, Any]], list[MemberFailure]]:
        """Keep the members every rank could load, so all ranks evaluate the same ensemble."""
        if trainer.world_size == 1:
            return loaded, failures
        ok = {p for p, _ in loaded}
        votes = torch.tensor([1.0 if p in ok else 0.0 for p in paths], device=pl_module.device)
        votes = trainer.strategy.reduce(votes, reduce_op="sum").cpu()
        everywhere = {p for p, v in zip(paths, votes.tolist(), strict=True) if v == trainer.world_size}
        elsewhere = [MemberFailure(p, "could not be loaded on another rank") for p, _ in loaded if p not in everywhere]
        return [(p, m) for p, m in loaded if p in everywhere], [*failures, *elsewhere]

    def evaluate(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        loaded: list[tuple[str, Any]],
        failures: list[MemberFailure],
    ) -> EnsembleReport | None:
        """Score the loaded members and their ensemble on the whole test set, identical on all ranks."""
        loader = user_loader(trainer, pl_module, "test")
        if loader is None:
            return None

        def first_batch() -> Any:  # read only if the task must be observed (no task, no loss object)
            return to_model(trainer, next(iter(loader)))

        with evaluating(pl_module), run_precision(trainer):
            task = self.adapter.task_of(pl_module, first_batch)
        loader, partitioned = shard(loader, trainer.global_rank, trainer.world_size)
        sums = ensemble_sums(
            [m for _, m in loaded],
            loader,
            task,
            split_batch=self.adapter.split_batch,
            to_device=lambda b: to_model(trainer, b),
            split_module=pl_module,
        )
        if partitioned:
            sums = trainer.strategy.reduce(sums.to(pl_module.device), reduce_op="sum").cpu().double()
        if int(sums[0, 2]) == 0:
            return None
        return EnsembleReport.from_sums(sums, [p for p, _ in loaded], task, failures)

    def _fail(self, error: CheckpointError, final: bool = True) -> None:
        if self.on_failure == "raise":
            raise error
        if self.on_failure == "warn":
            rank_zero_warn(f"CheckpointEnsemble: {error}" + (" — no ensemble evaluated." if final else " — left out."))
