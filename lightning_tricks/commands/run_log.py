"""The run's log file (``<run dir>/<command>.log``, Hydra's) holds what the terminal showed.

Hydra writes every record that reaches the root logger to that file. Three kinds of output never
did, so the file stayed empty while the terminal showed the run's verdicts and summary:

* Lightning's messages, and ours sent through ``rank_zero_info`` (the recipe checks' verdicts):
  Lightning gives its ``lightning.pytorch`` / ``lightning.fabric`` loggers a console handler of
  their own and stops them propagating to the root when it is imported before logging is set up
  (``lightning-tricks`` imports it before Hydra configures logging);
* warnings (``rank_zero_warn``: failed checks, Lightning's advice), which Python prints to stderr;
* what is printed (the summary table, a report, the resume command, Lightning's model summary).

:func:`logs_terminal` wraps a command's Hydra ``main``. For the job's duration Hydra's file handlers
also hang on those Lightning loggers, every warning shown is also written to the file, and what is
printed to ``sys.stdout`` / ``sys.stderr`` is copied there without its colours. The terminal shows
what it showed before, in the same form: the copy sits behind streams that still report the real
terminal (``isatty``), so Rich and the progress bars behave as before. Progress-bar redraws (text
with carriage returns or cursor movements) are not copied: they are not lines the terminal keeps.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, TextIO

# Lightning's loggers that do not propagate to the root (lightning/pytorch/__init__.py, fabric/__init__.py).
_OWN_HANDLERS = ("lightning.pytorch", "lightning.fabric", "lightning")
# The name copies are logged under; they go to the file handlers only (the terminal already showed them).
_COPY = logging.getLogger("lightning_tricks.terminal")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# A redraw: carriage return, cursor up/down/show/hide, erase line (what live progress bars write).
_REDRAW = re.compile(r"\r|\x1b\[(?:\d*[ABK]|\?25[hl]|2K)")


def _file_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def _to_file(handlers: list[logging.Handler], level: int, text: str) -> None:
    """Write ``text`` to the log file(s) as one record, without showing it on the console again."""
    record = _COPY.makeRecord(_COPY.name, level, __file__, 0, "%s", (text,), None)
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


class _Copy(io.TextIOBase):
    """A stream that writes to the terminal's stream as it is and copies whole lines to the log file."""

    def __init__(self, stream: TextIO, handlers: list[logging.Handler], level: int) -> None:
        self.stream = stream
        self.handlers = handlers
        self.level = level
        self.pending = ""
        self.paused = False  # while a warning is shown: it is copied as a warning record instead

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if not self.paused and not _REDRAW.search(text):
            self.pending += text
            if "\n" in self.pending:
                lines, self.pending = self.pending.rsplit("\n", 1)
                self.emit(lines)
        return written

    def emit(self, text: str) -> None:
        text = _ANSI.sub("", text).rstrip()
        if text.strip():
            _to_file(self.handlers, self.level, text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:  # Rich, tqdm and others style their output for the terminal they really write to
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    def __getattr__(self, name: str) -> Any:  # anything else a caller reads from the real stream
        return getattr(self.stream, name)


def logs_terminal(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command's Hydra ``main`` so that its log file holds what its terminal shows."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        handlers = _file_handlers()
        if not handlers:  # Hydra's job logging switched off (hydra/job_logging=disabled): nothing to fill
            return command(*args, **kwargs)
        attached = []
        for name in _OWN_HANDLERS:
            logger = logging.getLogger(name)
            if not logger.propagate:
                for handler in handlers:
                    if handler not in logger.handlers:
                        logger.addHandler(handler)
                        attached.append((logger, handler))
        out, err = _Copy(sys.stdout, handlers, logging.INFO), _Copy(sys.stderr, handlers, logging.WARNING)
        show = warnings.showwarning

        def show_and_log(message, category, filename, lineno, file=None, line=None) -> None:
            # One record per warning, whatever the stream it is shown on (a live progress bar redirects stderr).
            out.paused = err.paused = True
            try:
                show(message, category, filename, lineno, file, line)
            finally:
                out.paused = err.paused = False
            _to_file(handlers, logging.WARNING, f"{category.__name__}: {message}")

        warnings.showwarning = show_and_log
        sys.stdout, sys.stderr = out, err
        try:
            return command(*args, **kwargs)
        finally:
            sys.stdout, sys.stderr = out.stream, err.stream
            for copy in (out, err):
                copy.emit(copy.pending)
            warnings.showwarning = show
            for logger, handler in attached:
                logger.removeHandler(handler)

    return run
