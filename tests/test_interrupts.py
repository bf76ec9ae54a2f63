"""Ctrl-C, SIGTERM and kill -9: a run saves where it is (or keeps its last checkpoint), says how to resume, and
the resumed run ends with the weights of an uninterrupted one, bit for bit.

In-process tests send the signal to this process from inside the training step (the deterministic way to
hit a given step); the end-to-end tests run ``lightning-tricks train`` in a subprocess and signal it from
outside, at a moment the test does not choose.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from test_resume_exact import Blobs

from lightning_tricks import InterruptCheckpoint, ResumableDataLoader, SeedEverything, TrainingInterrupted
from lightning_tricks.models import MLP
from lightning_tricks.testing import run_ddp

# --- in process: the callback -------------------------------------------------------------------------


class SignalAt(Callback):
    """Sends `signum` to this process during training step `step` (before InterruptCheckpoint sees the step end),
    on rank `rank` only."""

    def __init__(self, signum: int, step: int, rank: int = 0) -> None:
        self.signum, self.step, self.rank = signum, step, rank
        self.handlers: dict[str, object] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            self.handlers = {s.name: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
            os.kill(os.getpid(), self.signum)


def fit(root: Path, max_epochs: int = 2, ckpt_path: str | None = None, extra: list | None = None, **trainer_kwargs):
    pl.seed_everything(0, verbose=False)
    if trainer_kwargs.get("devices", 1) > 1:
        trainer_kwargs["strategy"] = "ddp"
    model = MLP(input_shape=(16,), num_outputs=4, hidden_sizes=[32], dropout=0.3)
    interrupt = InterruptCheckpoint(dirpath=root)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=[SeedEverything(0), *(extra or []), interrupt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=Blobs(ResumableDataLoader), ckpt_path=ckpt_path)
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_where_the_run_is_stops_with_the_shell_code_and_the_resume_is_exact(
    tmp_path: Path, signum: int
) -> None:
    full = fit(tmp_path / "full")
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as stop:
        fit(tmp_path / "stopped", extra=[SignalAt(signum, 20)])  # step 20: batch 5 of epoch 1
    assert stop.value.code == 128 + signum and stop.value.signal_name == signal.Signals(signum).name
    # The step the signal arrived in is finished, and saved: Lightning's own step-checkpoint point.
    assert (stop.value.epoch, stop.value.step) == (1, 21)
    assert stop.value.checkpoint == str(tmp_path / "stopped" / "interrupted.ckpt")
    assert torch.load(stop.value.checkpoint, weights_only=True)["global_step"] == 21
    # Our handlers are gone after fit: a later Ctrl-C does what it did before.
    assert {s: signal.getsignal(s) for s in before} == before

    resumed = fit(tmp_path / "resumed", ckpt_path=stop.value.checkpoint)
    assert np.array_equal(resumed, full)


def fit_ddp(root: str, stop_at: int | None = None, ckpt_path: str | None = None, devices: int = 2) -> dict:
    """`fit` as a DDP job; SIGINT reaches rank 1 only (what `kill -INT <pid>` of one rank does)."""
    extra = [SignalAt(signal.SIGINT, stop_at, rank=1)] if stop_at is not None else []
    try:
        return {"weights": fit(Path(root), ckpt_path=ckpt_path, extra=extra, devices=devices)}
    except TrainingInterrupted as stop:
        return {"stopped": (stop.code, stop.epoch, stop.step, stop.checkpoint)}


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_a_signal_on_one_rank_stops_every_rank_at_the_same_step_and_the_resume_is_exact(tmp_path: Path) -> None:
    full = run_ddp(fit_ddp, str(tmp_path / "full"), timeout=300)
    stopped = run_ddp(fit_ddp, str(tmp_path / "stopped"), stop_at=5, timeout=300)
    ckpt = str(tmp_path / "stopped" / "interrupted.ckpt")
    # The signal arrives during the 6th step (8 per rank and epoch); the ranks' flags cross while the 7th trains,
    # so every rank saves at the end of the 7th.
    assert [r["stopped"] for r in stopped] == [(130, 0, 7, ckpt)] * 2
    resumed = run_ddp(fit_ddp, str(tmp_path / "resumed"), ckpt_path=ckpt, timeout=300)
    for rank in (0, 1):
        assert np.array_equal(resumed[rank]["weights"], full[rank]["weights"])


def test_lightning_sigterm_and_slurm_requeue_handlers_stay_outside_the_training_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGUSR1 (Lightning's SLURM auto-requeue) stays Lightning's while training; SIGTERM is ours only then."""
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "test", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NODEID", "0")
    probe = SignalAt(0, 3)  # signal 0: nothing is sent, the handlers are read
    fit(tmp_path, max_epochs=1, extra=[probe], plugins=[SLURMEnvironment(auto_requeue=True)])
    sigusr1, sigterm = probe.handlers["SIGUSR1"], probe.handlers["SIGTERM"]
    assert type(sigusr1).__name__ == "_HandlersCompose"  # Lightning's: saves hpc_ckpt and requeues
    assert any(getattr(h, "__name__", "") == "_slurm_sigusr_handler_fn" for h in sigusr1.signal_handlers)
    assert getattr(sigterm, "__self__", None).__class__ is InterruptCheckpoint


# --- end to end: `lightning-tricks train` in a subprocess -----------------------------------------------

# 105 training steps per epoch, a few seconds each; the checks that take seconds are off.
TRAIN = [
    "logger=csv",
    "data=synthetic/classification",
    "data.num_samples=1200",
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "callbacks.overfit_batch_check=null",
    "callbacks.input_independent_baseline=null",
    "callbacks.rich_progress_bar=null",
    "trainer.enable_progress_bar=false",
    "test=false",
]


def start(run_dir: Path, *overrides: str, new_folder: bool = True) -> subprocess.Popen:
    """`lightning-tricks train` in `run_dir` (new_folder=False: where a resume puts it, output next to it)."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "lightning_tricks", "train", *overrides]
    cmd += [f"hydra.run.dir={run_dir}"] if new_folder else []
    # Output to files, not pipes: nobody reads a pipe while the run goes on, and a full one would stall it.
    with (
        open(run_dir.parent / f"{run_dir.name}.out", "w") as out,
        open(run_dir.parent / f"{run_dir.name}.err", "w") as err,
    ):
        return subprocess.Popen(cmd, cwd=run_dir.parent, env=env, stdout=out, stderr=err, text=True)


def finish(proc: subprocess.Popen, run_dir: Path, timeout: float = 300) -> tuple[int, str, str]:
    code = proc.wait(timeout=timeout)
    out = (run_dir.parent / f"{run_dir.name}.out").read_text()
    err = (run_dir.parent / f"{run_dir.name}.err").read_text()
    return code, out, err


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {path.name} was written"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    code, _, err = finish(start(run_dir, *TRAIN), run_dir)
    assert code == 0, err[-3000:]
    return final_weights(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_train_command_on_a_signal_saves_prints_how_to_resume_and_logs_everything(
    tmp_path: Path, signum: int, uninterrupted: dict[str, torch.Tensor]
) -> None:
    run_dir = tmp_path / "run"
    proc = start(run_dir, *TRAIN)
    wait_for(run_dir / "checkpoints" / "last.ckpt", proc)  # the first epoch is done
    proc.send_signal(signum)
    code, out, err = finish(proc, run_dir)

    assert code == 128 + signum, err[-3000:]  # 130 for SIGINT, 143 for SIGTERM
    ckpt = run_dir / "checkpoints" / "interrupted.ckpt"
    assert ckpt.is_file()
    assert "run interrupted" in out and f"stopped by {signal.Signals(signum).name} at epoch" in out
    (line,) = [x for x in out.splitlines() if x.startswith("resume with: ")]
    words = shlex.split(line.removeprefix("resume with: "))
    # ckpt_path alone: a resume continues the run with its own config, in its own folder.
    assert words == ["lightning-tricks", "train", f"ckpt_path={ckpt}"]
    assert "Traceback" not in err

    # The log file holds what the terminal showed: verdicts, warnings, the summary and the resume command.
    log = (run_dir / "train.log").read_text()
    for shown in ("[init_loss] pass", "[shuffle] pass", "SeedEverything: seed 42", "run interrupted", line):
        assert shown in log, shown
    # Every warning the terminal showed (stderr) is in the file too (quiet output may show none).
    for warning in [x for x in err.splitlines() if "Warning: " in x]:
        assert warning.strip() in log, warning

    # Resuming with the printed command, from another folder, trains the same run to its end, in its folder,
    # and lands on the uninterrupted run's weights.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out, err = finish(start(elsewhere / "resume", *words[2:], new_folder=False), elsewhere / "resume")
    assert code == 0, err[-3000:]
    assert not (elsewhere / "outputs").exists()  # no new run folder
    assert same_weights(final_weights(run_dir), uninterrupted)
    assert "resume with:" in (run_dir / "train.log").read_text() and log in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_resume_from_last_ckpt_is_bit_identical(
    tmp_path: Path, uninterrupted: dict[str, torch.Tensor]
) -> None:
    """SIGKILL cannot be caught: what is left is the last step checkpoint (every 25 steps, mostly mid-epoch)."""
    every = ["+callbacks@callbacks.last_checkpoint_steps=last_checkpoint_steps"]
    every.append("callbacks.last_checkpoint_steps.every_n_train_steps=25")
    run_dir = tmp_path / "run"
    proc = start(run_dir, *TRAIN, *every)
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    delay = random.uniform(0.0, 1.5)
    time.sleep(delay)
    proc.kill()
    finish(proc, run_dir)
    step = torch.load(last, weights_only=True)["global_step"]
    context = f"killed {delay:.2f} s after the first checkpoint; last.ckpt holds step {step}"

    resumed_dir = tmp_path / "resumed"
    code, _, err = finish(start(resumed_dir, *TRAIN, *every, f"ckpt_path={last}"), resumed_dir)
    assert code == 0, f"{context}\n{err[-3000:]}"
    # Killed after the last training step (the machine was slow to deliver the kill): the resume has nothing
    # left to train and writes no checkpoint; the killed run's last.ckpt then holds the final weights.
    final = resumed_dir if (resumed_dir / "checkpoints" / "last.ckpt").is_file() else run_dir
    assert same_weights(final_weights(final), uninterrupted), context
