"""What a command prints: its own results (checks, verdicts, summary), not the libraries' chatter.

Every command's Hydra ``main`` is wrapped by :func:`quiet_unless_verbose`. With ``verbose=false`` (the
default) it filters, in the command's process only, lines known to be noise for a user of this CLI:

* Lightning's info lines about hardware, its ``litlogger`` tip, "``Trainer.fit`` stopped: ... reached"
  and the "Restoring states / Loaded model weights" lines of the final evaluation (the summary names the
  checkpoint evaluated);
* known deprecation warnings raised inside the libraries, which the user cannot act on;
* W&B's banner and its history/summary footer (``WANDB_QUIET``; the run summary names the W&B folder and
  the ``wandb sync`` command), and its warning about the ``anonymous`` setting Lightning passes.

Nothing is filtered in the library itself: ``import lightning_tricks`` changes no logging or warning
setting. ``verbose=true`` shows everything as the libraries print it. Either way, Rich does not cut
tables at 80 columns when the output is not a terminal (a log file, CI): it gets ``COLUMNS`` (default
160), unless the caller set it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, TextIO

from omegaconf import DictConfig

# Messages of Lightning's `rank_zero_info` logger (the records' own text).
LOG_NOISE = (
    r"^(GPU|TPU|HPU|IPU) available: ",
    r"^💡 Tip: .*litlogger",
    r"^`Trainer\.(fit|validate|test)` stopped: `max_(epochs|steps)=\d+` reached",
    r"^Restoring states from the checkpoint path at ",
    r"^Loaded model weights from the checkpoint at ",
)
# Python warnings (the start of the message), raised by the libraries' own code.
WARNING_NOISE = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
# Lines W&B writes to stderr itself, even with WANDB_QUIET.
STREAM_NOISE = (
    r"^wandb: WARNING The anonymous setting has no effect",
    r"^wandb: W&B syncing is set to `offline`",
    r"^wandb: Run data is saved locally in ",
    r"^wandb: View this run in the terminal with ",
)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
NON_TTY_COLUMNS = "160"


class DropMessages(logging.Filter):
    """A logging filter that drops records whose message matches one of ``patterns``."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


class DropLines:
    """A text stream that passes every write on to ``stream`` except those matching ``patterns``.

    W&B writes each message as one ``write`` call (``click.echo``); everything else (the progress bar's
    partial lines included) passes through unchanged and unbuffered.
    """

    def __init__(self, stream: TextIO, patterns: tuple[str, ...]) -> None:
        self.stream = stream
        self.patterns = [re.compile(p, re.MULTILINE) for p in patterns]

    def write(self, text: str) -> int:
        if any(p.search(text) for p in self.patterns):
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ...
        return getattr(self.stream, name)


_filtered = False


def filter_noise() -> None:
    """Install the filters (once per process: a multirun's jobs share it)."""
    global _filtered
    if _filtered:
        return
    _filtered = True
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).addFilter(DropMessages(LOG_NOISE))
    for pattern in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    os.environ.setdefault("WANDB_QUIET", "true")
    sys.stderr = DropLines(sys.stderr, STREAM_NOISE)


def quiet_unless_verbose(command: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a command's Hydra ``main``: known noise filtered unless ``verbose=true``; wide tables in logs."""

    @functools.wraps(command)
    def run(cfg: DictConfig) -> Any:
        if not sys.stdout.isatty():
            os.environ.setdefault("COLUMNS", NON_TTY_COLUMNS)
        if not cfg.get("verbose", False):
            filter_noise()
        return command(cfg)

    return run
