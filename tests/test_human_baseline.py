"""Recipe 2.6 — HumanBaseline: a human number beside the model's metric, given or measured from two annotations."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_tricks import HumanBaseline
from lightning_tricks.callbacks.human_baseline import agreement
from lightning_tricks.commands.summary import RunSummary
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP


def test_agreement_is_one_annotation_scored_against_the_other() -> None:
    assert agreement([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    assert HumanBaseline(annotations=[["a", "b"], ["a", "c"]]).value == 0.5


def test_logged_every_validation_epoch_beside_the_metric_and_compared_at_the_end(tmp_path: Path) -> None:
    human = HumanBaseline(metric="val/acc", value=0.97)
    logger = CSVLogger(tmp_path, name="csv", version="")
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=3, callbacks=[human], logger=logger,
                         enable_progress_bar=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(MLP(input_shape=(1, 8, 8), num_outputs=10), datamodule=DigitsDataModule())
    with (Path(logger.log_dir) / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("tricks/human_baseline/val/acc")]
    assert [float(r["tricks/human_baseline/val/acc"]) for r in rows] == pytest.approx([0.97] * 3)  # float32 log
    assert all(r["val/acc"] for r in rows)  # the model's metric on the same rows: plotted together
    assert human.model_value == pytest.approx(float(trainer.callback_metrics["val/acc"]))
    assert human.summary().startswith(f"model val/acc {human.model_value:.4g} vs human 0.97: human ahead")
    assert RunSummary.from_trainer(trainer, {}, evaluated=None).humans == [human.summary()]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="exactly one of `value`"):
        HumanBaseline()
    with pytest.raises(ValueError, match="exactly one of `value`"):
        HumanBaseline(value=0.9, annotations=[[1], [1]])
    with pytest.raises(ValueError, match="got 3 and 2 labels"):
        HumanBaseline(annotations=[[1, 2, 3], [1, 2]])
