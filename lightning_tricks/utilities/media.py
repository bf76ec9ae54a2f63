"""The one place callbacks log scalars, images and tables, whatever loggers the Trainer has.

* a ``WandbLogger`` gets images and tables (sortable in the W&B UI);
* a ``TensorBoardLogger`` gets images and a markdown table;
* with neither (a CSV logger, or none), images land as PNG and tables as CSV
  under ``<run dir>/media/`` so nothing is lost.

A table that gains rows over the run (one batch per evaluation) is a :class:`GrowingTable`: each
evaluation logs only its new rows, so the bytes written grow linearly with the run, not
quadratically. Everything W&B writes for a run, including the copies it stages for table
artifacts, stays in that run's folder (:func:`wandb_files_in_run`).

Only rank zero writes; call these from every rank without guarding. Scalars
go to every logger through ``log_metrics``, so they can be logged from hooks
where ``LightningModule.log`` is not allowed (``setup``, ``on_fit_start``).

:func:`images_logged_to` lets a command see every image logged while it runs (its HTML report
shows them), whatever loggers the run has: W&B and TensorBoard keep images in formats of their own.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from lightning_tricks.functional.images import figure_to_array, make_grid, to_uint8_image


def _image_array(image: Any) -> np.ndarray:
    """uint8 HxWxC from a matplotlib figure, one image, or a batch of images (shown as a grid)."""
    if hasattr(image, "canvas") and hasattr(image, "savefig"):
        return figure_to_array(image)
    ndim = getattr(image, "ndim", np.ndim(image))
    return make_grid(image) if ndim == 4 else to_uint8_image(image)


def run_dir(trainer: pl.Trainer) -> Path:
    """The folder of this run's files: the first logger's ``log_dir``, else ``default_root_dir``."""
    # Not `trainer.log_dir`: under DDP it broadcasts from rank 0, a collective that hangs when only
    # rank 0 asks — and media are written by rank 0 only. The logger's own attribute is local.
    for logger in trainer.loggers:
        folder = getattr(logger, "log_dir", None) or logger.save_dir
        if folder:
            return Path(folder)
    return Path(trainer.default_root_dir)


def _file_path(trainer: pl.Trainer, key: str, step: int, suffix: str) -> Path:
    # One file per key and step, like W&B/TensorBoard keep one entry per step: nothing is overwritten.
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")
    path = run_dir(trainer) / "media" / f"{safe}_step{step}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# W&B reads its data folder (artifact staging: `<data dir>/artifacts/staging`, with the artifact
# manifests) and its cache folder from these variables each time it stages a file. wandb 0.31 has no
# per-run setting for either; by default both are in the user's home (~/.local/share/wandb,
# ~/.cache/wandb), where an offline run's staged copies stay until `wandb sync` (thousands of files
# after a day of runs, untouched by deleting the run folder).
_WANDB_FOLDERS = {"WANDB_DATA_DIR": "", "WANDB_CACHE_DIR": "cache"}


@contextlib.contextmanager
def wandb_files_in_run(run: Any) -> Iterator[Path]:
    """Within the block, W&B stages artifact files (tables and their images) and caches them in the
    folder of ``run`` (``.../wandb/offline-run-<time>-<id>``), not in the user's home.

    The variables are set only while our own calls log (they are process-wide) and restored after:
    a run's files go to its own folder, also when a multirun logs several runs one after another. The
    staged files stay referenced by absolute path in the run's log, so ``wandb sync`` finds them.
    """
    folder = Path(run.dir).parent  # run.dir is the run's `files/`
    saved = {name: os.environ.get(name) for name in _WANDB_FOLDERS}
    os.environ.update({name: str(folder / sub) for name, sub in _WANDB_FOLDERS.items()})
    try:
        yield folder
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: Called with (key, step, HxWxC uint8 array) for every image logged on rank zero; see images_logged_to.
_image_listeners: list[Callable[[str, int, np.ndarray], None]] = []


@contextlib.contextmanager
def images_logged_to(listener: Callable[[str, int, np.ndarray], None]) -> Iterator[None]:
    """Within the block, ``listener(key, step, image)`` is called for every image :func:`log_image` logs.

    A listener, not a logger of its own: the report of a command must not change which loggers the
    run has (and what they write), only see what they were given.
    """
    _image_listeners.append(listener)
    try:
        yield
    finally:
        _image_listeners.remove(listener)


def _rich_loggers(trainer: pl.Trainer) -> tuple[list[WandbLogger], list[TensorBoardLogger]]:
    wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    tensorboard = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    return wandb, tensorboard


def _step(trainer: pl.Trainer, step: int | None) -> int:
    return trainer.global_step if step is None else step


def log_scalars(trainer: pl.Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numbers (e.g. ``{"tricks/init_loss/measured": 2.30}``) to every logger, from rank zero."""
    if not trainer.is_global_zero:
        return
    values = {k: float(v) for k, v in metrics.items()}
    for logger in trainer.loggers:
        logger.log_metrics(values, step=_step(trainer, step))


def log_image(
    trainer: pl.Trainer, key: str, image: Any, step: int | None = None, caption: str | None = None
) -> Path | None:
    """Log a matplotlib figure, an image (HxW, CxHxW, HxWxC) or a batch (NxCxHxW, shown as a grid).

    Returns the PNG written when no W&B/TensorBoard logger is attached, else None.
    """
    if not trainer.is_global_zero:
        return None
    array = _image_array(image)
    for listener in list(_image_listeners):
        listener(key, _step(trainer, step), array)
    wandb_loggers, tb_loggers = _rich_loggers(trainer)
    for logger in wandb_loggers:
        extra = {"caption": [caption]} if caption else {}
        with wandb_files_in_run(logger.experiment):
            logger.log_image(key=key, images=[array], step=_step(trainer, step), **extra)
    for logger in tb_loggers:
        logger.experiment.add_image(key, array, global_step=_step(trainer, step), dataformats="HWC")
    if wandb_loggers or tb_loggers:
        return None
    import matplotlib.image

    path = _file_path(trainer, key, _step(trainer, step), ".png")
    matplotlib.image.imsave(path, array[..., 0] if array.shape[-1] == 1 else array, cmap="gray")
    return path


def log_table(
    trainer: pl.Trainer,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    step: int | None = None,
) -> Path | None:
    """Log a table: a W&B Table, a markdown table in TensorBoard, else a CSV file.

    Returns the CSV written when no W&B/TensorBoard logger is attached, else None.
    """
    if not trainer.is_global_zero:
        return None
    rows = _check_rows(key, columns, rows)
    wandb_loggers, tb_loggers = _rich_loggers(trainer)
    data = _wandb_cells(rows) if wandb_loggers else []
    for logger in wandb_loggers:
        with wandb_files_in_run(logger.experiment):
            logger.log_table(key=key, columns=list(columns), data=data, step=_step(trainer, step))
    for logger in tb_loggers:
        logger.experiment.add_text(key, _markdown(columns, rows), global_step=_step(trainer, step))
    if wandb_loggers or tb_loggers:
        return None
    path = _file_path(trainer, key, _step(trainer, step), ".csv")
    _write_csv(path, columns, rows, mode="w")
    return path


#: Increments per W&B incremental table before a new one starts (bounds W&B's per-log list of increments).
INCREMENTS_PER_TABLE = 25


class GrowingTable:
    """A table that gains rows over a run, logged at a cost linear in its rows: each
    :meth:`append` logs only the rows it is given.

    * W&B: an incremental ``wandb.Table`` (``log_mode="INCREMENTAL"``): each call adds an increment
      holding only the new rows; W&B shows the increments as one table. W&B writes the paths of *all*
      earlier increments into every history row and summary that logs the table (216 bytes more per
      increment), which makes a long run's W&B files quadratic in its length; so a table holds at most
      :data:`INCREMENTS_PER_TABLE` increments, and the next call starts a new one under the same key
      (the dashboard shows the latest; earlier steps keep theirs).
    * TensorBoard: the new rows as a markdown text at the step.
    * otherwise: one file, ``<run dir>/media/<key>.csv``, the new rows appended.

    The first call in the object's life starts the table (the CSV file is rewritten): give it every
    row known so far, e.g. after a resume the history restored from the checkpoint, then only new ones.
    """

    def __init__(self, key: str, columns: Sequence[str]) -> None:
        self.key = key
        self.columns = list(columns)
        # id(run) -> (run, its incremental table, increments logged in it)
        self._wandb: dict[int, tuple[Any, Any, int]] = {}
        self._csv_started = False

    def append(self, trainer: pl.Trainer, rows: Sequence[Sequence[Any]], step: int | None = None) -> Path | None:
        """Log ``rows`` (the new ones) at ``step``; returns the CSV file when no W&B/TensorBoard logger is attached."""
        if not trainer.is_global_zero:
            return None
        rows = _check_rows(self.key, self.columns, rows)
        wandb_loggers, tb_loggers = _rich_loggers(trainer)
        data = _wandb_cells(rows) if wandb_loggers else []
        for logger in wandb_loggers:
            import wandb

            run = logger.experiment
            if id(run) not in self._wandb or self._wandb[id(run)][2] >= INCREMENTS_PER_TABLE:
                self._wandb[id(run)] = (run, wandb.Table(columns=self.columns, log_mode="INCREMENTAL"), 0)
            _, table, increments = self._wandb[id(run)]
            self._wandb[id(run)] = (run, table, increments + 1)
            for row in data:
                table.add_data(*row)
            with wandb_files_in_run(run):
                # log_metrics, not log_table: log_table builds a new Table, and only this one knows its increments.
                logger.log_metrics({self.key: table}, step=_step(trainer, step))
        for logger in tb_loggers:
            logger.experiment.add_text(self.key, _markdown(self.columns, rows), global_step=_step(trainer, step))
        if wandb_loggers or tb_loggers:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.key).strip("_")
        path = run_dir(trainer) / "media" / f"{safe}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_csv(path, self.columns, rows, mode="a" if self._csv_started else "w")
        self._csv_started = True
        return path


def _check_rows(key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    rows = [list(r) for r in rows]
    if any(len(r) != len(columns) for r in rows):
        raise ValueError(f"log_table({key!r}): every row must have {len(columns)} values (columns {list(columns)}).")
    return rows


def _wandb_cells(rows: list[list[Any]]) -> list[list[Any]]:
    """Pictures as ``wandb.Image`` (one per distinct array, however many rows share it); other cells as they are."""
    import wandb

    images: dict[int, Any] = {}
    return [[images.setdefault(id(v), wandb.Image(v)) if _is_image(v) else v for v in r] for r in rows]


def _markdown(columns: Sequence[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("[image]" if _is_image(v) else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _write_csv(path: Path, columns: Sequence[str], rows: list[list[Any]], mode: str) -> None:
    with path.open(mode, newline="") as f:
        writer = csv.writer(f)
        if mode == "w":
            writer.writerow(columns)
        writer.writerows([[_image_file(path, v) if _is_image(v) else v for v in r] for r in rows])


def _is_image(value: Any) -> bool:
    """Table cells holding a picture: uint8 arrays of shape (H, W, C)."""
    return isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3


def _image_file(table: Path, image: np.ndarray) -> str:
    """Save a table cell's picture once (named by its content) beside the CSV; the cell holds its path."""
    import hashlib

    import matplotlib.image

    folder = table.parent / "table_images"
    folder.mkdir(exist_ok=True)
    path = folder / f"{hashlib.sha1(image.tobytes()).hexdigest()[:16]}.png"
    if not path.exists():
        matplotlib.image.imsave(path, image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
    return str(path.relative_to(table.parent))
