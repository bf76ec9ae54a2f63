"""Run a function as a real multi-process DDP job on CPU and get back what every rank returned.

``run_ddp(fn, *args)`` starts ``python -m lightning_tricks.testing.ddp`` in a
fresh process, which calls ``fn(*args, devices=N)``. ``fn`` builds a
``Trainer(strategy="ddp", accelerator="cpu", devices=devices)`` and fits as a user's
script would: Lightning's own launcher then re-runs this module for ranks
``1..N-1`` (the path every ``python train.py`` user takes), each rank calls
``fn`` and its return value is pickled per rank. No mocking: gloo, real
processes, real collectives.

``fn`` must be importable by name (a module-level function) and return
something picklable; tensors are best converted to CPU first.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SPEC = "spec.pkl"


class DDPRunError(RuntimeError):
    """A rank failed or the job did not finish; the message holds the job's output."""


def run_ddp(fn: Callable[..., Any], *args: Any, devices: int = 2, timeout: float = 300, **kwargs: Any) -> list[Any]:
    """Call ``fn(*args, devices=devices, **kwargs)`` as a DDP job; return the results ordered by global rank.

    ``fn`` must create its Trainer with ``devices=devices`` and ``strategy="ddp"``.
    """
    if getattr(fn, "__qualname__", "").count("<locals>"):
        raise ValueError(f"run_ddp: `fn` must be a module-level function (importable by name), got {fn!r}.")
    with tempfile.TemporaryDirectory(prefix="lt-ddp-") as tmp:
        with open(Path(tmp) / _SPEC, "wb") as f:
            pickle.dump((fn, args, {**kwargs, "devices": devices}), f)
        env = dict(os.environ)
        # The child must import `fn` the way this process did (test modules live on pytest's sys.path).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env.pop("LOCAL_RANK", None)
        # A session of its own: on timeout the whole job (rank 0 and the ranks Lightning started) is killed.
        proc = subprocess.Popen(
            [sys.executable, "-m", "lightning_tricks.testing.ddp", tmp],
            env=env,
            cwd=tmp,  # files a Trainer writes to its default root (the cwd) go to the job's folder
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise DDPRunError(f"DDP job did not finish in {timeout} s:\n{_tail(stdout)}\n{_tail(stderr)}") from None
        results = []
        for rank in range(devices):
            path = Path(tmp) / f"result_{rank}.pkl"
            if proc.returncode != 0 or not path.exists():
                hint = "" if proc.returncode else " (did `fn` build Trainer(devices=devices, strategy='ddp')?)"
                raise DDPRunError(
                    f"DDP job failed (exit code {proc.returncode}, no result from rank {rank}{hint}):\n"
                    f"{_tail(stdout)}\n{_tail(stderr)}"
                )
            with open(path, "rb") as f:
                results.append(pickle.load(f))
        return results


def _tail(text: str | bytes | None, lines: int = 60) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def _worker(tmp: str) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    with open(Path(tmp) / _SPEC, "rb") as f:
        fn, args, kwargs = pickle.load(f)
    result = fn(*args, **kwargs)
    # Set by the Trainer to this process's global rank.
    rank = getattr(rank_zero_only, "rank", 0)
    with open(Path(tmp) / f"result_{rank}.pkl", "wb") as f:
        pickle.dump(result, f)
    # Tear the process group down explicitly, after every rank has written its result: left to the
    # interpreter's exit, gloo's threads are sometimes destroyed while still joinable, and the process
    # aborts ("terminate called without an active exception") although the job succeeded.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
