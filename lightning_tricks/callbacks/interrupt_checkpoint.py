"""Ctrl-C and SIGTERM end a run with a checkpoint of where it is, not with lost work.

Lightning's own handling loses the interrupted epoch: Ctrl-C raises ``KeyboardInterrupt`` wherever
the process is (mid-step, or inside a collective on one DDP rank only), and Lightning ends with a
"graceful shutdown" and exit code 1, saving nothing; on SIGTERM it stops after the current batch,
also without a checkpoint.

:class:`InterruptCheckpoint` turns both signals into a request: the handler only notes the signal;
at the end of the current training step (or validation), where Lightning's own step checkpoints are
written, every rank learns whether any rank was signalled (under DDP: one all-reduce of one integer
on a CPU group of its own, running while the next step trains, so no step waits and the GPU is not
synchronised; a signal then stops the run one step later), all ranks write the checkpoint together,
and all raise :class:`TrainingInterrupted`: a ``SystemExit`` with the shell's code for the signal
(130 for SIGINT, 143 for SIGTERM) that carries the checkpoint's path. Lightning's ``on_exception`` hooks and teardown
run as for any exception. A second Ctrl-C stops at once, as Python's default does.

Saved where ``ModelCheckpoint(every_n_train_steps=...)`` saves, the checkpoint resumes exactly (with
:class:`~lightning_tricks.SeedEverything` and a :class:`~lightning_tricks.ResumableDataLoader`).

Only SIGINT and SIGTERM are taken over, and only while ``fit`` trains (from ``on_train_start`` to
``on_train_end``); the previous handlers come back afterwards. Before that (setup, the sanity check)
and after it (``validate``, ``test``) a signal does what it did before. SIGUSR1, Lightning's SLURM
auto-requeue signal, is left to Lightning: it still saves its ``hpc_ckpt`` and requeues the job; the
SIGTERM SLURM sends after it then stops the run here, with a checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(SystemExit):
    """The run stopped on a signal after saving a checkpoint. Its ``code`` is the shell's: 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: str | None, epoch: int | None = None, step: int | None = None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class InterruptCheckpoint(Callback):
    """On SIGINT (Ctrl-C) or SIGTERM, finish the current step, save ``<dirpath>/<filename>.ckpt`` and stop.

    Args:
        dirpath: folder of the checkpoint; None: the first ``ModelCheckpoint``'s folder, else
            ``<default_root_dir>/checkpoints``.
        filename: the checkpoint's name, without ``.ckpt``. Rewritten by every interrupt of the run.

    Raises :class:`TrainingInterrupted` (a ``SystemExit``: a script that does not catch it exits with 130 or
    143, as a shell does for those signals) from ``trainer.fit``, on every rank.

    Put it after your other callbacks: it saves in ``on_train_batch_end``, so the checkpoint holds what the
    callbacks before it did with the step (Lightning runs its ``ModelCheckpoint`` s after all others; their
    periodic saves are not needed when this one saves). It is not a Lightning ``Checkpoint``: with one,
    Lightning would add no default ``ModelCheckpoint`` and would refuse ``enable_checkpointing=False``.

    Example::

        trainer = Trainer(callbacks=[SeedEverything(0), InterruptCheckpoint()])
        trainer.fit(model, datamodule=dm)  # Ctrl-C -> checkpoints/interrupted.ckpt; then ckpt_path= it
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str = "interrupted") -> None:
        if not isinstance(filename, str) or not filename or Path(filename).name != filename:
            raise ValueError(f"InterruptCheckpoint: `filename` must be a file name without folders, got {filename!r}.")
        self.dirpath = None if dirpath is None else str(dirpath)
        self.filename = filename
        self.received: int | None = None  # the first signal received while fit ran
        self.checkpoint_path: str | None = None
        self._previous: dict[int, Any] = {}
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None  # the exchange in flight (DDP)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.received = None
            self.checkpoint_path = None
            self._group = _control_group(trainer)  # collective (a new group), so here, where every rank is
            self._pending = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed here, after Lightning registered its handlers (Trainer._run): Lightning's SIGTERM handler
        # would otherwise run first, and stop after the batch without a checkpoint. Lightning's teardown puts
        # back the handlers it found, whatever happens, so ours are gone after fit in any case.
        self._install()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._uninstall()
        if self._pending is not None:  # every rank is here: finish the last exchange, leave nothing in flight
            self._pending[0].wait()
            self._pending = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._stop_if_signalled(trainer, wait=False)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_if_signalled(trainer, wait=True)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._uninstall()  # on_train_end does not run after an exception
        self._pending = None  # not waited for: another rank may be gone

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user will not wait for the step to end
        if self.received is None:
            self.received = signum
            # Not rank_zero_info: the signal may reach any rank, and logging inside a handler can deadlock.
            os.write(
                2,
                f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping"
                f"{' (Ctrl-C again stops at once, without one)' if signum == signal.SIGINT else ''}.\n".encode(),
            )

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python sets signal handlers in the main thread only
        for signum in SIGNALS:
            current = signal.getsignal(signum)
            if current != self._handle:
                self._previous.setdefault(signum, current)
                signal.signal(signum, self._handle)

    def _uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _agreed_signal(self, wait: bool) -> int:
        """The signal any rank received (0: none); every rank gets the same answer at the same step.

        Under DDP the ranks exchange their flags with an all-reduce that runs while the next step trains
        (``wait=False``): the answer at the end of step k is the flags as they were at the end of step k - 1,
        so a signal stops the run one step later than on one process, and no step waits for the others.
        ``wait=True`` (validation's end) also exchanges the flags as they are now.
        """
        local = self.received or 0
        if self._group is None:
            return local
        agreed = 0
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            agreed = int(flag.item())
            self._pending = None
        if agreed:
            return agreed
        flag = torch.tensor([local], dtype=torch.int64)
        if wait:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
            return int(flag.item())
        work = torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flag)
        return 0

    def _stop_if_signalled(self, trainer: pl.Trainer, wait: bool) -> None:
        signum = self._agreed_signal(wait)
        if not signum:
            return
        self.received = signum
        path = Path(self._dirpath(trainer)) / f"{self.filename}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # collective: every rank is here, at the same step
        self.checkpoint_path = str(path)
        rank_zero_info(
            f"InterruptCheckpoint: {signal.Signals(signum).name} at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}: saved {path}."
        )
        raise TrainingInterrupted(signum, str(path), trainer.current_epoch, trainer.global_step)

    def _dirpath(self, trainer: pl.Trainer) -> str:
        if self.dirpath is not None:
            return self.dirpath
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                return str(callback.dirpath)
        return os.path.join(trainer.default_root_dir, "checkpoints")


def _control_group(trainer: pl.Trainer) -> Any:
    """The process group the ranks agree on a signal through (None: one process).

    A group of its own, on CPU (gloo): an all-reduce over NCCL would synchronise the GPU at every step, and
    the exchange in flight must not queue behind (or ahead of) the gradients' all-reduce."""
    if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    return torch.distributed.new_group(backend="gloo")
