"""Recipe 2.10 — VisualizeBatch: the exact tensors entering the model, logged, with the hook always removed."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_tricks import VisualizeBatch
from lightning_tricks.data import DigitsDataModule, SyntheticClassificationDataModule
from lightning_tricks.models import MLP
from lightning_tricks.testing import read_offline_run, run_ddp


class FlipsInTrainingStep(MLP):
    """Augments inside training_step, after the loader: only a hook on the model sees the result."""

    seen: list[torch.Tensor]

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x.flip(-1) * 2.0
        self.seen.append(x.detach().clone())
        return self.compute_loss(self(x), y)


def fit(tmp_path: Path, model, dm, callback, logger=None, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        callbacks=[callback, *kwargs.pop("callbacks", [])],
        logger=logger if logger is not None else CSVLogger(tmp_path, name="csv", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def test_captures_the_tensor_after_training_step_transforms_and_removes_its_hook(tmp_path: Path) -> None:
    model = FlipsInTrainingStep(input_shape=(1, 8, 8), num_outputs=10)
    model.seen = []
    callback = VisualizeBatch(num_batches=2, max_samples=8)
    fit(tmp_path, model, DigitsDataModule(seed=0), callback)
    assert len(callback.captured) == 2
    for captured, seen in zip(callback.captured, model.seen[:2], strict=True):
        assert torch.equal(captured, seen[:8])  # the flipped, scaled tensor, not the loader's
    assert len(model._forward_pre_hooks) == 0
    media = tmp_path / "csv" / "media"
    assert sorted(p.name for p in media.iterdir()) == [
        "tricks_visualize_batch_0_inputs_step1.png",
        "tricks_visualize_batch_0_labels_step1.png",
        "tricks_visualize_batch_1_inputs_step2.png",
        "tricks_visualize_batch_1_labels_step2.png",
    ]


def test_tabular_inputs_become_a_table_of_the_exact_values(tmp_path: Path) -> None:
    dm = SyntheticClassificationDataModule(num_samples=300, num_features=5, num_classes=3)
    callback = VisualizeBatch(max_samples=4)
    fit(tmp_path, MLP(input_shape=(5,), num_outputs=3), dm, callback)
    with (tmp_path / "csv" / "media" / "tricks_visualize_batch_0_values_step1.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label", "x0", "x1", "x2", "x3", "x4"] and len(rows) == 5
    assert [float(v) for v in rows[1][1:]] == pytest.approx(callback.captured[0][0].tolist(), abs=1e-5)
    assert (tmp_path / "csv" / "media" / "tricks_visualize_batch_0_feature_histograms_step1.png").exists()


def test_feature_histograms_count_every_sample_of_every_feature_on_one_value_axis() -> None:
    flat = torch.stack([torch.full((10,), 2.0), torch.linspace(-1.0, 3.0, 10), torch.zeros(10)], dim=1)
    figure = VisualizeBatch()._histograms(flat)
    counts = figure.axes[0].images[0].get_array()
    assert counts.shape == (30, 3)  # 30 value bins (rows) by 3 features (columns)
    assert counts.sum(axis=0).tolist() == [10, 10, 10]  # each column holds all 10 samples of its feature
    # Shared bins over -1..3 (width 4/30): a constant feature fills the one bin that holds its value
    assert counts[:, 0].max() == 10 and counts[int((2.0 + 1) / (4 / 30)), 0] == 10
    assert counts[int((0.0 + 1) / (4 / 30)), 2] == 10 and (counts[:, 1] > 0).sum() >= 8  # the ramp spreads
    flat[:3, 1] = float("nan")  # not binned, but said
    figure = VisualizeBatch()._histograms(flat)
    assert figure.axes[0].images[0].get_array()[:, 1].sum() == 7 and "3 NaN/inf" in figure.axes[0].get_title()


def test_wandb_run_holds_the_images(tmp_path: Path) -> None:
    logger = WandbLogger(project="lt-tests", save_dir=str(tmp_path), offline=True)
    fit(tmp_path, MLP(input_shape=(1, 8, 8), num_outputs=10), DigitsDataModule(), VisualizeBatch(), logger=logger)
    files = Path(logger.experiment.dir)
    logger.experiment.finish()
    run = read_offline_run(files.parent)
    (inputs,) = run.values("tricks/visualize_batch/0/inputs/filenames")
    assert (files / inputs[0]).exists() and run.values("tricks/visualize_batch/0/labels/_type") == ["images/separated"]


def test_a_resumed_run_does_not_log_again(tmp_path: Path) -> None:
    dm, model = DigitsDataModule(), MLP(input_shape=(1, 8, 8), num_outputs=10)
    fit(tmp_path / "a", model, dm, VisualizeBatch(), callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    again = VisualizeBatch()
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, callbacks=[again],
                         logger=False, enable_progress_bar=False, default_root_dir=tmp_path / "b")  # fmt: skip
    trainer.fit(model, datamodule=dm, ckpt_path=tmp_path / "last.ckpt")
    assert again.captured == [] and again.logged == 1 and len(model._forward_pre_hooks) == 0


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"`num_batches` must be an integer >= 1, got 0"):
        VisualizeBatch(num_batches=0)
    with pytest.raises(ValueError, match=r"give both `mean` and `std`"):
        VisualizeBatch(mean=[0.5])


def visualize_on_ranks(root: str, devices: int) -> dict:
    pl.seed_everything(0, verbose=False)
    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    callback = VisualizeBatch()
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp", max_epochs=1, limit_train_batches=2,
                         limit_val_batches=0, callbacks=[callback], logger=CSVLogger(root, name="csv", version=""),
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule())
    return {"captured": len(callback.captured), "hooks": len(model._forward_pre_hooks)}


@pytest.mark.slow
@pytest.mark.ddp
def test_under_ddp_every_rank_captures_and_only_rank_zero_writes(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(visualize_on_ranks, str(tmp_path), devices=2, timeout=180)
    assert rank0 == rank1 == {"captured": 1, "hooks": 0}
    assert sorted(p.name for p in (tmp_path / "csv" / "media").iterdir()) == [
        "tricks_visualize_batch_0_inputs_step1.png",
        "tricks_visualize_batch_0_labels_step1.png",
    ]
