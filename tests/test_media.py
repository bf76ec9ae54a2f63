"""The one media layer: W&B (offline, read back from its files), TensorBoard (read back), or PNG/CSV files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lightning_tricks.functional.images import captioned_grid, make_grid, to_uint8_image
from lightning_tricks.testing import read_offline_run, run_ddp
from lightning_tricks.utilities.media import log_image, log_scalars, log_table

ROWS = [[0, "cat", 0.5], [1, "dog", 2.25]]


def _trainer(tmp_path: Path, logger) -> pl.Trainer:
    return pl.Trainer(logger=logger, default_root_dir=tmp_path, enable_progress_bar=False)


def test_make_grid_tiles_and_scales_the_batch_together() -> None:
    images = torch.stack([torch.zeros(1, 2, 3), torch.ones(1, 2, 3)])  # a dark and a bright image
    grid = make_grid(images, ncols=2, padding=1)
    assert grid.shape == (2, 7, 1) and grid.dtype == np.uint8
    assert grid[:, :3].max() == 0 and grid[:, 4:].min() == 255  # relative brightness kept
    assert to_uint8_image(torch.rand(3, 4, 5)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match=r"`image` must be .* got \(2, 3, 4, 5, 6\)"):
        to_uint8_image(np.zeros((2, 3, 4, 5, 6)))


def test_captioned_grid_places_each_picture_scaled_with_its_caption_below() -> None:
    bright = np.full((8, 4, 1), 255, np.uint8)  # 8 high, 4 wide: scaled x2 to 16 x 8 in a 16-pixel cell
    dark = np.zeros((8, 8, 3), np.uint8)
    grid = captioned_grid([bright, dark, dark], ["#1: 3 -> 5\nloss 2.00", "b", "c"], columns=2, cell=16)
    # 2 columns of (16 + 4) plus a 4-pixel margin; 2 rows of 16 + two 12-pixel caption lines + 2 * 4, below 4
    assert grid.shape == (4 + 2 * (16 + 2 * 12 + 8), 2 * (16 + 4) + 4, 3) and grid.dtype == np.uint8
    assert (grid[4:20, 8:16] == 255).all()  # centred in its cell
    assert (grid[4:20, 24:40] == 0).all()  # the dark picture fills the second cell
    assert (grid[20:44, 4:20] < 128).any() and (grid[20:44, 24:40] < 128).any()  # captions: dark text on white
    assert (grid[52:68, 4:20] == 0).all() and (grid[48:52] == 255).all()  # the second row, 48 pixels lower
    with pytest.raises(ValueError, match="as many captions as pictures"):
        captioned_grid([dark], ["a", "b"])
    # A lone picture widens to its title; a picture larger than the cell is shrunk into it.
    lone = captioned_grid([np.zeros((224, 100, 3), np.uint8)], ["x"], title="val: highest losses", cell=16)
    assert lone.shape[1] > 16 + 2 * 4 and (lone[20:36, 8:15] == 0).all()  # below a 20-pixel title band, centred


def test_without_rich_loggers_media_are_files(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, CSVLogger(tmp_path, name="csv", version=""))
    png = log_image(trainer, "tricks/batch", torch.rand(6, 1, 8, 8), step=3)
    table = log_table(trainer, "tricks/worst samples", ["index", "label", "loss"], ROWS, step=3)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig_png = log_image(trainer, "tricks/curve", fig)
    plt.close(fig)
    assert png == tmp_path / "csv" / "media" / "tricks_batch_step3.png"
    assert plt.imread(png).shape[:2] == make_grid(torch.rand(6, 1, 8, 8)).shape[:2]
    with table.open() as f:
        assert list(csv.reader(f)) == [["index", "label", "loss"], ["0", "cat", "0.5"], ["1", "dog", "2.25"]]
    assert plt.imread(fig_png).shape[:2] == (200, 200)
    assert fig_png.name == "tricks_curve_step0.png"  # no step given: the trainer's global step
    log_scalars(trainer, {"tricks/x": 1.5}, step=0)
    trainer.loggers[0].save()
    assert "tricks/x" in (tmp_path / "csv" / "metrics.csv").read_text()


def test_no_logger_still_writes_files(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, False)
    assert log_image(trainer, "img", np.zeros((4, 4))).exists()


def test_bad_table_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every row must have 3 values"):
        log_table(_trainer(tmp_path, False), "t", ["a", "b", "c"], [[1, 2]])


def test_wandb_offline_run_holds_images_tables_and_scalars(tmp_path: Path) -> None:
    logger = WandbLogger(project="lt-tests", save_dir=str(tmp_path), offline=True)
    trainer = _trainer(tmp_path, logger)
    assert log_image(trainer, "tricks/batch", torch.rand(4, 3, 8, 8), step=1, caption="a batch") is None
    assert log_table(trainer, "tricks/table", ["index", "label", "loss"], ROWS, step=1) is None
    log_scalars(trainer, {"tricks/value": 0.25}, step=2)
    files = Path(logger.experiment.dir)
    logger.experiment.finish()
    run = read_offline_run(files.parent)

    images = list((files / "media" / "images").glob("tricks/batch_*.png"))
    assert len(images) == 1 and plt.imread(images[0]).shape[:2] == make_grid(torch.rand(4, 3, 8, 8)).shape[:2]
    (table_file,) = (files / "media" / "table").glob("tricks/table_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["index", "label", "loss"] and table["data"] == ROWS
    assert run.values("tricks/value") == [0.25] and run.summary["tricks/value"] == 0.25
    (logged_image,) = run.values("tricks/batch/filenames")
    assert logged_image == [str(images[0].relative_to(files))]
    assert run.values("tricks/table/nrows") == [2]
    assert not (tmp_path / "media").exists()  # W&B attached: no duplicate files


def test_tensorboard_gets_images_and_text(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = _trainer(tmp_path, logger)
    log_image(trainer, "tricks/batch", torch.rand(4, 1, 8, 8), step=5)
    log_table(trainer, "tricks/table", ["index", "label", "loss"], ROWS, step=5)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    (image,) = events.Images("tricks/batch")
    assert image.step == 5 and (image.height, image.width) == make_grid(torch.rand(4, 1, 8, 8)).shape[:2]
    (text,) = events.Tensors("tricks/table/text_summary")
    assert b"| 1 | dog | 2.25 |" in text.tensor_proto.string_val[0]


def log_from_every_rank(root: str, devices: int) -> dict:
    """Every rank calls the media functions during a DDP fit; only rank 0 may write."""

    class LogMedia(pl.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            self.png = log_image(trainer, "tricks/weights", pl_module.layer.weight.detach())
            self.csv = log_table(trainer, "tricks/table", ["rank"], [[trainer.global_rank]])

    from lightning.pytorch.demos.boring_classes import BoringModel

    callback = LogMedia()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=CSVLogger(root, name="csv", version=""),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(BoringModel())
    return {"png": callback.png and str(callback.png), "csv": callback.csv and str(callback.csv)}


@pytest.mark.slow
@pytest.mark.ddp
def test_under_ddp_only_rank_zero_writes(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(log_from_every_rank, str(tmp_path), devices=2, timeout=180)
    assert rank1 == {"png": None, "csv": None}
    assert Path(rank0["png"]).exists()
    assert Path(rank0["csv"]).read_text().splitlines() == ["rank", "0"]
    assert sorted(p.name for p in (tmp_path / "csv" / "media").iterdir()) == [
        "tricks_table_step2.csv",
        "tricks_weights_step2.png",
    ]
