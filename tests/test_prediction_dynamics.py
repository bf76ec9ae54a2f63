"""Recipe 2.11 — PredictionDynamics: fixed seeded samples, right numbers, one growing table (each row written
once), resume- and DDP-safe."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn

from lightning_tricks import PredictionDynamics
from lightning_tricks.data import DigitsDataModule, SyntheticRegressionDataModule
from lightning_tricks.models import MLP
from lightning_tricks.testing import read_offline_run, run_ddp


def trainer(tmp_path: Path, callbacks: list, epochs: int = 2, logger=None) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, limit_train_batches=3, limit_val_batches=0, callbacks=callbacks,
                      logger=logger if logger is not None else CSVLogger(tmp_path, name="csv", version=""),
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip


def test_rows_hold_the_true_class_probability_and_loss(tmp_path: Path) -> None:
    dm = DigitsDataModule(seed=0)
    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    callback = PredictionDynamics(num_samples=5, num_train_samples=3, seed=1)
    trainer(tmp_path, [callback]).fit(model, datamodule=dm)
    assert len(callback.indices["val"]) == 5 and len(callback.indices["train"]) == 3
    assert len(callback.history) == 2 * 8  # 2 evaluations x 8 samples
    x, y = dm.datasets["val"].tensors
    idx = callback.indices["val"]
    model.eval()
    with torch.no_grad():
        logits = model(x[idx])
    last = [r for r in callback.history if r["epoch"] == 1 and r["split"] == "val"]
    probabilities = torch.softmax(logits, -1)
    for k, row in enumerate(last):
        assert row["index"] == idx[k] and row["label"] == int(y[idx[k]])
        assert row["p_true"] == pytest.approx(float(probabilities[k, y[idx[k]]]), abs=1e-6)
        assert row["loss"] == pytest.approx(
            float(nn.functional.cross_entropy(logits[k : k + 1], y[idx[k] : idx[k] + 1])), abs=1e-5
        )
        assert row["prediction"] == int(logits[k].argmax())
    media = tmp_path / "csv" / "media"
    with (media / "tricks_prediction_dynamics_table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 16  # one file: each evaluation appended its 8 rows
    assert [int(row["epoch"]) for row in table] == [0] * 8 + [1] * 8
    thumbnails = {row["input"] for row in table}
    assert len(thumbnails) == 8 and all((media / t).exists() for t in thumbnails)  # one picture per sample
    assert (media / "tricks_prediction_dynamics_curves_step6.png").exists()


def test_same_seed_same_samples_and_resume_keeps_them(tmp_path: Path) -> None:
    dm = DigitsDataModule(seed=0)
    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    first = PredictionDynamics(num_samples=4, seed=3)
    trainer(tmp_path / "a", [first, ModelCheckpoint(dirpath=tmp_path, save_last=True)]).fit(model, datamodule=dm)
    assert PredictionDynamics(num_samples=4, seed=3).indices == {}  # chosen at the first evaluation
    resumed = PredictionDynamics(num_samples=4, seed=99)  # another seed: the checkpoint's samples still win
    trainer(tmp_path / "b", [resumed], epochs=3).fit(model, datamodule=dm, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.indices == first.indices
    assert [r["epoch"] for r in resumed.history] == [0] * 4 + [1] * 4 + [2] * 4
    assert resumed.history[:8] == first.history


def test_regression_logs_predictions(tmp_path: Path) -> None:
    dm = SyntheticRegressionDataModule(num_samples=300)
    callback = PredictionDynamics(num_samples=3)
    trainer(tmp_path, [callback], epochs=1).fit(MLP(input_shape=(16,), num_outputs=1, task="regression"), datamodule=dm)
    row = callback.history[0]
    assert row["p_true"] is None and isinstance(row["prediction"], float) and isinstance(row["label"], float)
    x = dm.datasets["val"].tensors[0][row["index"]]
    assert callback._inputs["val", row["index"]].startswith(f"{float(x[0]):.3g} ")  # values, not a picture


def test_wandb_table_gains_each_evaluation_s_rows(tmp_path: Path) -> None:
    logger = WandbLogger(project="lt-tests", save_dir=str(tmp_path), offline=True)
    trainer(tmp_path, [PredictionDynamics(num_samples=4)], logger=logger).fit(
        MLP(input_shape=(1, 8, 8), num_outputs=10), datamodule=DigitsDataModule()
    )
    files = Path(logger.experiment.dir)
    logger.experiment.finish()
    run = read_offline_run(files.parent)
    assert run.values("tricks/prediction_dynamics/table/nrows") == [4, 8]  # the table's size after each increment
    increments = sorted((files / "media" / "table").glob("tricks/prediction_dynamics/table_*.table.json"))
    assert [len(json.loads(f.read_text())["data"]) for f in increments] == [4, 4]  # each holds its own rows
    table = run.table("tricks/prediction_dynamics/table")  # as W&B shows it: the increments together
    assert [row["epoch"] for row in table] == [0] * 4 + [1] * 4
    assert all(row["input"].is_file() for row in table)  # a picture per row, not the string 'Image'
    assert run.values("tricks/prediction_dynamics/curves/_type") == ["images/separated"]  # drawn at the end


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        PredictionDynamics(num_samples=0)
    with pytest.raises(ValueError, match=r"`every_n_epochs` must be an integer >= 1, got 0"):
        PredictionDynamics(every_n_epochs=0)


def dynamics_on_ranks(root: str, devices: int) -> dict:
    pl.seed_everything(0, verbose=False)
    callback = PredictionDynamics(num_samples=4)
    pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp", max_epochs=2, limit_train_batches=2,
               limit_val_batches=0, callbacks=[callback], logger=CSVLogger(root, name="csv", version=""),
               enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False).fit(
        MLP(input_shape=(1, 8, 8), num_outputs=10), datamodule=DigitsDataModule()
    )  # fmt: skip
    return {"indices": callback.indices, "history": callback.history}


@pytest.mark.slow
@pytest.mark.ddp
def test_under_ddp_both_ranks_agree_and_rank_zero_writes(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(dynamics_on_ranks, str(tmp_path), devices=2, timeout=180)
    assert rank0 == rank1 and len(rank0["history"]) == 8
    (table,) = (tmp_path / "csv" / "media").glob("tricks_prediction_dynamics_table*.csv")
    assert len(table.read_text().splitlines()) == 1 + 8
