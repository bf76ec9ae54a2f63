"""The ``report.html`` of ``lightning-tricks train``: what the run recorded, and the page made of it.

:class:`RunRecord` is a callback that ``train`` adds to every run. While :meth:`RunRecord.watching`
is open it keeps

* the metrics per epoch (``trainer.callback_metrics`` at each training epoch's end, validation
  included): the loss and metric curves. Read from the Trainer, not from a logger's files, because
  W&B's offline history and TensorBoard's events have no reader in the package, and a run may have
  no logger at all;
* the last image logged under each key (through :func:`~lightning_tricks.utilities.media.images_logged_to`):
  the figures the callbacks drew (LR curve, filters, activations, highest-loss samples, prediction
  dynamics, the checks' curves), whatever the loggers;
* the log records of our callbacks and Lightning's (``lightning_tricks.*``, ``lightning.pytorch.*``),
  INFO and up: the trail of what the run did, as the log file has it.

The checks' verdicts are the ``result`` of the run's :class:`RecipeCheck` callbacks: typed, with the
numbers behind each verdict and its figures. :func:`write_run_report` puts it all on one page with
the run's summary and the command that resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback
from matplotlib.ticker import MaxNLocator
from typing_extensions import override

from lightning_tricks.callbacks.recipe_check import RecipeCheck
from lightning_tricks.commands.html_report import HtmlReport
from lightning_tricks.commands.summary import RunSummary
from lightning_tricks.utilities.media import images_logged_to
from lightning_tricks.utilities.plots import new_figure

# Loggers whose records the page lists: ours (verdicts, decisions) and Lightning's (rank_zero_info).
_LOGGERS = ("lightning_tricks", "lightning.pytorch")
_MAX_RECORDS = 500  # a chatty run must not make a page nobody can open


class _Records(logging.Handler):
    def __init__(self, into: list[tuple[str, str, str]]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.into) < _MAX_RECORDS:
            self.into.append((record.levelname, record.name, record.getMessage()))


class RunRecord(Callback):
    """Metrics per epoch, the images logged and the log records of a run, for its ``report.html``."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.images: dict[str, tuple[int, np.ndarray]] = {}
        self.records: list[tuple[str, str, str]] = []

    @contextlib.contextmanager
    def watching(self) -> Iterator[RunRecord]:
        """Keep images and log records while the block runs (fit, validate, test)."""
        handler = _Records(self.records)
        loggers = [logging.getLogger(name) for name in _LOGGERS]
        for logger in loggers:
            logger.addHandler(handler)
        try:
            with images_logged_to(self._keep_image):
                yield self
        finally:
            for logger in loggers:
                logger.removeHandler(handler)

    def _keep_image(self, key: str, step: int, image: np.ndarray) -> None:
        self.images[key] = (step, image)  # the last one: the state at the end of the run

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        self.history.append({"epoch": float(trainer.current_epoch), **values})

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed fit gets the epochs before it; validate()/test() of the best checkpoint restore an older
        # history, which must not erase the epochs after it: keep every epoch either side knows.
        known = {h["epoch"] for h in self.history}
        merged = self.history + [h for h in state_dict.get("history", []) if h["epoch"] not in known]
        self.history = sorted(merged, key=lambda h: h["epoch"])


def metric_curves(history: list[dict[str, float]]) -> dict[str, Any]:
    """One figure per metric name against epoch, a line per split: ``loss`` (train/val), ``acc``, ...

    The recipe's own numbers (``tricks/...``) are left out: they are the checks' evidence, shown with them.
    """
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for entry in history:
        for key, value in entry.items():
            if key == "epoch" or key.startswith("tricks/") or "/" not in key or not math.isfinite(value):
                continue
            split, name = key.split("/", 1)
            name = name.removesuffix("_epoch")
            if name.endswith("_step"):
                continue  # the last step's value is not the epoch's
            curves.setdefault(name, {}).setdefault(split, []).append((entry["epoch"], value))
    figures = {}
    for name, lines in sorted(curves.items()):
        figure = new_figure(5.0, 3.2)
        ax = figure.subplots()
        for split, points in sorted(lines.items()):
            # Two values at one epoch (e.g. train/loss and train/loss_epoch): keep the epoch's.
            by_epoch = dict(points)
            ax.plot(list(by_epoch), list(by_epoch.values()), marker="o", label=split)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.legend()
        figures[name] = figure
    return figures


def write_run_report(trainer: pl.Trainer, record: RunRecord, summary: RunSummary, resume: str | None = None) -> Path:
    """Write ``<run dir>/report.html``: summary, the command that continues the run (``resume``), verdicts,
    curves, figures, log; return its path."""
    page = HtmlReport(f"lightning-tricks train: run {summary.status}", str(summary.output_dir))
    page.section("Summary")
    splits = [s for s in ("val", "test") if any(k.startswith(f"{s}/") for k in summary.metrics)]
    names = sorted({k.split("/", 1)[1] for k in summary.metrics if k.split("/", 1)[0] in splits})
    rows = [[split, *(summary.metrics.get(f"{split}/{n}") for n in names)] for split in splits]
    page.table(["split", *names], rows)
    places = [("evaluated", summary.evaluated or "final weights"), ("outputs", str(summary.output_dir))]
    places += [("human", line) for line in summary.humans]
    places += [("best ckpt", summary.best_checkpoint), ("last ckpt", summary.last_checkpoint)]
    places += [(what, f"{path}  (open: {how})") for what, path, how in summary.logs]
    page.table(["", ""], [row for row in places if row[1]])
    if resume:
        finished = summary.status == "finished"
        page.text(
            "Continue this run (give it more epochs with trainer.max_epochs=...):" if finished else "Resume with:"
        )
        page.code(resume)

    results = [cb.result for cb in trainer.callbacks if isinstance(cb, RecipeCheck) and cb.result is not None]
    of_checks = tuple(f"tricks/{r.name}/" for r in results)  # each check's figures go with its verdict
    images = {k: (f"{k} (step {step})", image) for k, (step, image) in record.images.items()}
    page.section("Checks")
    if results:
        page.verdicts(results)
        page.figures(dict(v for k, v in images.items() if k.startswith(of_checks)))
    else:
        page.text("No recipe check ran in this session (none configured, or a resumed run: they run at its start).")

    page.section("Curves")
    curves = metric_curves(record.history)
    if curves:
        page.figures(curves)
    else:
        page.text("No training epoch ended in this session.")
    others = dict(v for k, v in images.items() if not k.startswith(of_checks))
    if others:
        page.section("Figures")
        page.figures(others)
    if record.records:
        page.section("Log")
        page.code("\n".join(f"{level:<8} {message}" for level, _, message in record.records))
    return page.save(summary.output_dir)
