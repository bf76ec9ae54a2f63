"""What `lightning-tricks train` prints: the checks' verdicts and the summary, not the libraries' chatter
(unless verbose=true). Real runs in a subprocess, output not a terminal, as in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny, and one check fails on purpose (an expected initial loss of 5 where ln 10 = 2.30 is right): a FAIL
# verdict; one optimizer step cannot decide whether a batch can be overfit: an INCONCLUSIVE one.
TINY = [
    "callbacks.init_loss_check.expected=5.0",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "callbacks.overfit_batch_check.max_steps=1",
    "callbacks.input_independent_baseline.steps=5",
]
# Known noise: Lightning's device lines and litlogger tip, the pytree deprecation warning, W&B's
# warning about Lightning's `anonymous` argument and its history footer, the evaluation's restore lines.
NOISE = [
    "GPU available:",
    "litlogger",
    "`isinstance(treespec, LeafSpec)` is deprecated",
    "wandb: WARNING The anonymous setting has no effect",
    "wandb: Run history:",
    "Restoring states from the checkpoint path",
]


def train(tmp_path: Path, *overrides: str) -> str:
    env = {**os.environ, "WANDB_MODE": "offline"}
    for name in ("WANDB_SILENT", "WANDB_QUIET", "COLUMNS"):  # as a user's shell has them: unset
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_tricks", "train", *TINY, *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return output


@pytest.mark.slow
def test_quiet_by_default_everything_with_verbose(tmp_path: Path) -> None:
    quiet = train(tmp_path, f"hydra.run.dir={tmp_path / 'quiet'}")
    assert [noise for noise in NOISE if noise in quiet] == []
    # What the user came for stays: the verdicts, one line each without a source-file prefix, and the summary.
    assert "[gradient_dependency] pass: " in quiet
    (fail,) = [line for line in quiet.splitlines() if "[init_loss] FAIL" in line]
    assert fail.startswith("[init_loss] FAIL: initial loss")  # not `.../recipe_check.py:130: UserWarning`
    (undecided,) = [line for line in quiet.splitlines() if "[overfit_batch] INCONCLUSIVE" in line]
    assert undecided.startswith("[overfit_batch] INCONCLUSIVE: ")
    assert "lightning-tricks: run finished" in quiet and "wandb sync " in quiet
    # Rich tables are not cut at 80 columns in a log: the model summary shows the full type name.
    assert "CrossEntropyLoss" in quiet and "CrossEntr…" not in quiet
    # The verdicts are also in the run's log file.
    assert "[init_loss] FAIL" in (tmp_path / "quiet" / "train.log").read_text()
    print(f"output lines: quiet {len(quiet.splitlines())}", end="")

    loud = train(tmp_path, f"hydra.run.dir={tmp_path / 'loud'}", "verbose=true")
    assert [noise for noise in NOISE if noise not in loud] == []
    assert "[init_loss] FAIL: initial loss" in loud and "lightning-tricks: run finished" in loud
    print(f", verbose {len(loud.splitlines())}")
