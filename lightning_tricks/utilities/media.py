"""The one place callbacks log scalars, images and tables, whatever loggers the Trainer has.

* a ``WandbLogger`` gets images and tables (sortable in the W&B UI);
* a ``TensorBoardLogger`` gets images and a markdown table;
* with neither (a CSV logger, or none), images land as PNG and tables as CSV
  under ``<run dir>/media/`` so nothing is lost.

Only rank zero writes; call these from every rank without guarding. Scalars
go to every logger through ``log_metrics``, so they can be logged from hooks
where ``LightningModule.log`` is not allowed (``setup``, ``on_fit_start``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
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
    wandb_loggers, tb_loggers = _rich_loggers(trainer)
    for logger in wandb_loggers:
        extra = {"caption": [caption]} if caption else {}
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
    rows = [list(r) for r in rows]
    if any(len(r) != len(columns) for r in rows):
        raise ValueError(f"log_table({key!r}): every row must have {len(columns)} values (columns {list(columns)}).")
    wandb_loggers, tb_loggers = _rich_loggers(trainer)
    if wandb_loggers:
        import wandb

        images: dict[int, Any] = {}  # one wandb.Image per distinct array, however many rows share it
        data = [[images.setdefault(id(v), wandb.Image(v)) if _is_image(v) else v for v in r] for r in rows]
        for logger in wandb_loggers:
            logger.log_table(key=key, columns=list(columns), data=data, step=_step(trainer, step))
    for logger in tb_loggers:
        lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join("[image]" if _is_image(v) else str(v) for v in r) + " |" for r in rows]
        logger.experiment.add_text(key, "\n".join(lines), global_step=_step(trainer, step))
    if wandb_loggers or tb_loggers:
        return None
    path = _file_path(trainer, key, _step(trainer, step), ".csv")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[_image_file(path, v) if _is_image(v) else v for v in r] for r in rows])
    return path


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
