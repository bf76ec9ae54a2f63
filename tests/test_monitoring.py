"""The monitoring callbacks together: one real fit logged to W&B (offline, read back), and one 2-process DDP fit."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_tricks import (
    ActivationStats,
    FirstLayerFilters,
    FullDatasetLoss,
    HumanBaseline,
    PredictionDynamics,
    VisualizeBatch,
)
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP
from lightning_tricks.testing import read_offline_run, run_ddp


def callbacks() -> list:
    return [FullDatasetLoss(), PredictionDynamics(num_samples=4), VisualizeBatch(), FirstLayerFilters(),
            ActivationStats(every_n_steps=2), HumanBaseline(value=0.97)]  # fmt: skip


def test_everything_reaches_an_offline_wandb_run(tmp_path: Path) -> None:
    logger = WandbLogger(project="lt-tests", save_dir=str(tmp_path), offline=True)
    pl.Trainer(max_epochs=2, limit_train_batches=4, callbacks=callbacks(), logger=logger, enable_progress_bar=False,
               enable_checkpointing=False, default_root_dir=tmp_path).fit(
        MLP(input_shape=(1, 8, 8), num_outputs=10), datamodule=DigitsDataModule()
    )  # fmt: skip
    files = Path(logger.experiment.dir)
    logger.experiment.finish()
    run = read_offline_run(files.parent)
    assert len(run.values("tricks/full_loss/val")) == 2 and len(run.values("tricks/human_baseline/val/acc")) == 2
    assert run.values("tricks/prediction_dynamics/table/nrows") == [4, 8]
    for key in ("visualize_batch/0/inputs", "first_layer_filters", "activations/heatmap", "prediction_dynamics/curves"):
        (first, *_) = run.values(f"tricks/{key}/filenames")
        assert (files / first[0]).exists(), key
    assert run.values("tricks/activations/net.2/dead")


def all_on_ranks(root: str, devices: int) -> dict:
    pl.seed_everything(0, verbose=False)
    cbs = callbacks()
    pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp", max_epochs=2, limit_train_batches=2,
               callbacks=cbs, logger=CSVLogger(root, name="csv", version=""), enable_progress_bar=False,
               enable_model_summary=False, enable_checkpointing=False).fit(
        MLP(input_shape=(1, 8, 8), num_outputs=10), datamodule=DigitsDataModule()
    )  # fmt: skip
    full, dynamics, _, filters, _, human = cbs
    return {"full": full.history, "dynamics": dynamics.history, "filters": filters.last_images.sum().item(),
            "human": human.model_value}  # fmt: skip


@pytest.mark.slow
@pytest.mark.ddp
def test_under_ddp_ranks_agree_and_nothing_hangs(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(all_on_ranks, str(tmp_path), devices=2, timeout=240)
    assert rank0 == rank1
    assert [e["val_count"] for e in rank0["full"]] == [270, 270]  # the whole val set, once, on both ranks
    names = sorted(p.stem.split("_step")[0] for p in (tmp_path / "csv" / "media").iterdir())
    assert set(names) >= {
        "tricks_first_layer_filters",
        "tricks_activations_heatmap",
        "tricks_prediction_dynamics_table",
    }
