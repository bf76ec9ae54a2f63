"""The DDP test harness: returns each rank's result, and fails loudly with the job's output."""

from __future__ import annotations

import pytest

from lightning_tricks.testing import DDPRunError, run_ddp


def raises_before_fit(message: str, devices: int) -> None:
    raise RuntimeError(message)


def never_launches(devices: int) -> str:
    return "ran on one process only"  # builds no DDP Trainer: rank 1 never exists


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_a_failing_job_raises_with_its_traceback() -> None:
    with pytest.raises(DDPRunError, match=r"(?s)exit code 1.*RuntimeError: planted failure"):
        run_ddp(raises_before_fit, "planted failure", timeout=120)


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_a_job_that_is_not_distributed_is_reported() -> None:
    with pytest.raises(DDPRunError, match=r"no result from rank 1 \(did `fn` build Trainer"):
        run_ddp(never_launches, timeout=120)


def test_local_functions_are_refused_before_starting() -> None:
    def local(devices: int) -> None:
        return None

    with pytest.raises(ValueError, match="module-level function"):
        run_ddp(local)
