"""Recipe 1 — DataInspection: per-sample losses equal their closed forms, the loss ranking finds planted label errors.

Real Lightning runs on the built-in digits: the full table covers each sample once (also under DDP,
where the ranking equals the single-process one), flipped labels rise to the top of the training
loss ranking while a clean run's top is not them, media are read back from CSV and offline W&B, and
a resumed run does not redo its fit-start report.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
import types
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import TensorDataset

from lightning_tricks.callbacks.data_inspection import COLUMNS, DataInspection
from lightning_tricks.data import DigitsDataModule, SyntheticClassificationDataModule, SyntheticRegressionDataModule
from lightning_tricks.functional.sample_losses import (
    margin,
    per_sample_loss,
    precision_at_k,
    predicted_label,
    probability_of_label,
    rank_by_loss,
)
from lightning_tricks.models import MLP
from lightning_tricks.testing import read_offline_run, run_ddp

FLIPS = 30


def trainer(root: Path | str, callbacks: list, **kwargs: Any) -> pl.Trainer:
    defaults = dict(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                    enable_model_summary=False, default_root_dir=root, num_sanity_val_steps=0)  # fmt: skip
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def mlp(lr: float = 1e-3, **kwargs: Any) -> MLP:
    return MLP(input_shape=(1, 8, 8), num_outputs=10, optimizer=functools.partial(torch.optim.Adam, lr=lr), **kwargs)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- the functions, against torch's own reductions ------------------------------------------------


def test_per_sample_losses_equal_torch_unreduced_losses() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(7, 5, generator=g), torch.randint(0, 5, (7,), generator=g)
    assert torch.allclose(
        per_sample_loss("multiclass", logits, labels), F.cross_entropy(logits, labels, reduction="none")
    )
    z, y = torch.randn(7, 1, generator=g), torch.randint(0, 2, (7,), generator=g).float()
    expected = F.binary_cross_entropy_with_logits(z.squeeze(-1), y, reduction="none")
    assert torch.allclose(per_sample_loss("binary", z, y), expected)
    z, y = torch.randn(7, 3, generator=g), torch.randint(0, 2, (7, 3), generator=g).float()
    expected = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(-1)
    assert torch.allclose(per_sample_loss("multilabel", z, y), expected)
    out, target = torch.randn(7, 2, generator=g), torch.randn(7, 2, generator=g)
    assert torch.allclose(
        per_sample_loss("regression", out, target), F.mse_loss(out, target, reduction="none").mean(-1)
    )
    # The batch mean of the per-sample terms is the usual training loss.
    assert per_sample_loss("multiclass", logits, labels).mean() == pytest.approx(float(F.cross_entropy(logits, labels)))


def test_probability_of_label_and_margin_agree_with_the_prediction() -> None:
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    p_given = probability_of_label("multiclass", logits, labels)
    assert torch.allclose(p_given, torch.softmax(logits, -1)[torch.arange(50), labels])
    right = predicted_label("multiclass", logits) == labels
    assert torch.equal(margin("multiclass", logits, labels) > 0, right)  # margin > 0 exactly when right
    assert probability_of_label("regression", logits, labels) is None and margin("regression", logits, labels) is None


def test_rank_and_precision_at_k() -> None:
    assert rank_by_loss(torch.tensor([1.0, 3.0, 2.0, 3.0]), k=3).tolist() == [1, 3, 2]  # ties: earlier first
    assert precision_at_k([1, 3, 2], {3, 2}, k=2) == 0.5
    with pytest.raises(ValueError, match="fewer than k=5"):
        precision_at_k([1, 2], {1}, k=5)
    with pytest.raises(ValueError, match="`k` must be None or an integer >= 0, got -1"):
        rank_by_loss(torch.zeros(3), k=-1)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"`splits` must be a non-empty subset"):
        DataInspection(splits=["training"])
    with pytest.raises(ValueError, match=r"`top_k` must be an integer >= 1, got 0"):
        DataInspection(top_k=0)
    with pytest.raises(ValueError, match=r"`log_table_rows` must be one of \('top_k', 'all'\), got 'some'"):
        DataInspection(log_table_rows="some")
    with pytest.raises(ValueError, match=r"`every_n_epochs` must be None or an integer >= 1, got 0"):
        DataInspection(every_n_epochs=0)
    with pytest.raises(ValueError, match=r"`at_fit_end` must be True or False, got 'yes'"):
        DataInspection(at_fit_end="yes")


# ---- a real run: the full table, the top-k table and picture ---------------------------------------


def test_full_table_holds_each_sample_once_and_its_mean_is_a_manual_pass(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(seed=0)
    model = mlp()
    callback = DataInspection(splits=["train", "val"], top_k=8, at_fit_start=False, every_n_epochs=2)
    logger = CSVLogger(tmp_path, name="csv", version="")
    trainer(tmp_path, [callback], logger=logger).fit(model, datamodule=dm)
    model.eval()
    for split in ("train", "val"):
        x, y = dm.datasets[split].tensors
        with torch.no_grad():
            out = model(x)
        ranking = callback.ranking[split]
        rows = read_csv(ranking.path)
        assert len(rows) == len(y) == ranking.count
        assert [int(r["index"]) for r in rows] == list(range(len(y)))  # each index once, dataset order
        assert [int(r["label"]) for r in rows] == y.tolist()  # not the shuffled loader's order
        losses = torch.tensor([float(r["loss"]) for r in rows])
        assert torch.allclose(losses, F.cross_entropy(out, y, reduction="none"), atol=1e-5)
        assert ranking.mean_loss == pytest.approx(float(F.cross_entropy(out, y)), abs=1e-5)
        assert ranking.top == rank_by_loss(losses.double(), 8).tolist()
        assert [int(r["prediction"]) for r in rows] == out.argmax(-1).tolist()
        assert list(rows[0]) == list(COLUMNS)
        assert float(rows[0]["input_norm"]) == pytest.approx(float(x[0].norm()), rel=1e-5)
    # every_n_epochs=2 at the last epoch: fit end does not evaluate the same weights again.
    assert sorted(p.name for p in (tmp_path / "csv" / "data_inspection").glob("*.csv")) == [
        "train_step40.csv",
        "val_step40.csv",
    ]
    media = tmp_path / "csv" / "media"
    (table,) = media.glob("tricks_data_inspection_train_top_loss_step*.csv")
    top = read_csv(table)
    assert [int(r["index"]) for r in top] == callback.ranking["train"].top
    assert all((media / r["input"]).is_file() for r in top)  # the picture of each sample, beside the CSV
    assert len(list(media.glob("tricks_data_inspection_*_top_loss_grid_step*.png"))) == 2
    assert callback.state_dict()["summaries"]["val"]["top"] == callback.ranking["val"].top


def test_non_image_inputs_and_regression(tmp_path: Path) -> None:
    dm = SyntheticRegressionDataModule(num_samples=200, num_features=4, seed=0)
    model = MLP(input_shape=(4,), num_outputs=1, task="regression", hidden_sizes=(8,))
    callback = DataInspection(splits=["val"], top_k=5, at_fit_start=False, log_table_rows="all")
    trainer(tmp_path, [callback], max_epochs=1, logger=CSVLogger(tmp_path, name="csv", version="")).fit(
        model, datamodule=dm
    )
    x, y = dm.datasets["val"].tensors
    model.eval()
    with torch.no_grad():
        out = model(x)
        expected = ((out - y.reshape(out.shape)) ** 2).reshape(-1)
    ranking = callback.ranking["val"]
    assert torch.allclose(torch.tensor(ranking.columns["loss"]).float(), expected, rtol=1e-5)
    (table,) = (tmp_path / "csv" / "media").glob("tricks_data_inspection_val_top_loss_step*.csv")
    rows = read_csv(table)
    assert len(rows) == len(y)  # log_table_rows="all"
    assert rows[0]["input"].startswith(f"{float(x[int(rows[0]['index'])][0]):.3g} ")  # values, not a picture
    assert not list((tmp_path / "csv" / "media").glob("*grid*"))  # no picture grid without images


def test_binary_labels_and_predictions_are_integers(tmp_path: Path) -> None:
    dm = SyntheticClassificationDataModule(num_samples=200, num_features=4, num_classes=2, task="binary", seed=0)
    model = MLP(input_shape=(4,), num_outputs=1, task="binary", hidden_sizes=(8,))
    callback = DataInspection(splits=["train"], top_k=3, at_fit_start=False)
    trainer(tmp_path, [callback], max_epochs=1).fit(model, datamodule=dm)
    columns = callback.ranking["train"].columns
    assert set(columns["label"]) <= {0.0, 1.0} and set(columns["prediction"]) <= {0, 1}
    p_given = torch.tensor(columns["p_given"])
    assert torch.allclose(p_given, torch.exp(-torch.tensor(columns["loss"])))


# ---- flipped labels: the loss ranking finds them ------------------------------------------------------


class FlippedDigits(DigitsDataModule):
    """Digits with ``flips`` training labels moved to another (seeded, random) class; ``flipped`` lists them."""

    def __init__(self, flips: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flips = flips
        self.flipped: list[int] = []

    def setup(self, stage: str | None = None) -> None:
        fresh = not self.datasets
        super().setup(stage)
        if fresh and self.flips:
            x, y = self.datasets["train"].tensors
            g = torch.Generator().manual_seed(1)
            chosen = torch.randperm(len(y), generator=g)[: self.flips]
            y = y.clone()
            y[chosen] = (y[chosen] + torch.randint(1, 10, (self.flips,), generator=g)) % 10  # never the same class
            self.datasets["train"] = TensorDataset(x, y)
            self.flipped = sorted(chosen.tolist())


def top_flipped_fraction(root: Path, flips: int) -> float:
    planted = FlippedDigits(FLIPS, seed=0)
    planted.setup()
    dm = planted if flips else DigitsDataModule(seed=0)
    pl.seed_everything(0, verbose=False)
    callback = DataInspection(splits=["train"], top_k=FLIPS, at_fit_start=False)
    trainer(root, [callback], max_epochs=10).fit(mlp(), datamodule=dm)
    return precision_at_k(callback.ranking["train"].top, planted.flipped, k=FLIPS)


@pytest.mark.slow
def test_flipped_labels_top_the_training_loss_and_a_clean_run_does_not_flag_them(tmp_path: Path) -> None:
    # Measured 0.90 (27 of 30) after 10 epochs of Adam 1e-3 (0.83-0.90 over model seeds 0-3); clean: 0.00-0.03.
    assert top_flipped_fraction(tmp_path / "flipped", FLIPS) >= 0.8
    assert top_flipped_fraction(tmp_path / "clean", 0) <= 0.2


# ---- W&B offline --------------------------------------------------------------------------------------


def test_wandb_gets_the_top_loss_table_with_image_cells_and_the_grid(tmp_path: Path) -> None:
    logger = WandbLogger(project="lt-tests", save_dir=str(tmp_path), offline=True)
    callback = DataInspection(splits=["val"], top_k=6, at_fit_start=False)
    trainer(tmp_path, [callback], max_epochs=1, logger=logger).fit(mlp(), datamodule=DigitsDataModule(seed=0))
    files = Path(logger.experiment.dir)
    logger.experiment.finish()
    run = read_offline_run(files.parent)
    assert run.values("tricks/data_inspection/val/top_loss/nrows") == [6]
    (table_file,) = (files / "media" / "table").glob("tricks/data_inspection/val/top_loss_*.table.json")
    table = json.loads(table_file.read_text())
    assert [row[table["columns"].index("index")] for row in table["data"]] == callback.ranking["val"].top
    assert all(row[table["columns"].index("input")] == "Image" for row in table["data"])
    assert run.values("tricks/data_inspection/val/top_loss_grid/_type") == ["images/separated"]
    assert run.values("tricks/data_inspection/val/mean_loss") == [pytest.approx(callback.ranking["val"].mean_loss)]
    # The full table goes to the run directory whatever the logger.
    assert Path(callback.ranking["val"].path).is_file()


# ---- DDP: the same ranking from two ranks ---------------------------------------------------------------


class OneTestSample(DigitsDataModule):
    """Digits with a test split of one sample: on two ranks, rank 1 scores none of it."""

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.Subset(super().test_dataloader().dataset, [0]))


def ranking_on(root: str, devices: int) -> dict:
    gathered: list = []

    # Set up in every rank's process (Lightning re-runs this function there): the fit-start hook's
    # `all_gather` must collect one object per rank, in rank order, on every rank.
    def inspect_data(source: Any, **kwargs: Any) -> FakeReport:
        gathered.append(kwargs["all_gather"](kwargs["rank"]))
        return FakeReport(has_errors=False)

    real = sys.modules.get("lightning_tricks.inspection")
    sys.modules["lightning_tricks.inspection"] = types.SimpleNamespace(inspect_data=inspect_data)
    try:
        pl.seed_everything(0, verbose=False)
        # lr 0: the weights stay at their (seeded) init, so one and two processes score the same model.
        model = MLP(input_shape=(1, 8, 8), num_outputs=10, optimizer=functools.partial(torch.optim.SGD, lr=0.0))
        callback = DataInspection(splits=["train", "val", "test"], top_k=10)
        pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=1,
                   limit_train_batches=2, limit_val_batches=0, callbacks=[callback],
                   logger=CSVLogger(root, name=f"csv{devices}", version=""), enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False).fit(
            model, datamodule=OneTestSample(seed=0))  # fmt: skip
    finally:  # the single-process call runs inside pytest: leave the real module to the other tests
        sys.modules.pop("lightning_tricks.inspection")
        if real is not None:
            sys.modules["lightning_tricks.inspection"] = real
    result = {split: {"top": r.top, "columns": r.columns, "path": r.path} for split, r in callback.ranking.items()}
    return {**result, "gathered": gathered}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_give_the_single_process_ranking(tmp_path: Path) -> None:
    single = ranking_on(str(tmp_path), devices=1)
    rank0, rank1 = run_ddp(ranking_on, str(tmp_path), devices=2, timeout=240)
    assert single["gathered"] == [[0]] and rank0["gathered"] == rank1["gathered"] == [[0, 1]]
    for split, n in (("train", 1257), ("val", 270)):  # 1257: odd, so the shards differ in size
        assert rank0[split]["columns"]["index"] == list(range(n)) == rank1[split]["columns"]["index"]
        assert rank0[split]["top"] == rank1[split]["top"] == single[split]["top"]
        assert rank0[split]["columns"]["loss"] == rank1[split]["columns"]["loss"]  # identical on every rank
        assert rank0[split]["columns"]["loss"] == pytest.approx(single[split]["columns"]["loss"], abs=1e-5)
        assert len(read_csv(rank0[split]["path"])) == n and rank1[split]["path"] is None  # rank zero writes
    # Fewer samples than ranks: rank 1 scores nothing, and both ranks still hold the one sample's row.
    assert rank0["test"]["columns"]["index"] == rank1["test"]["columns"]["index"] == [0] == single["test"]["top"]
    assert rank0["test"]["columns"]["loss"] == pytest.approx(single["test"]["columns"]["loss"], abs=1e-5)


# ---- fit start: the data report, once ------------------------------------------------------------------


class FakeReport:
    def __init__(self, has_errors: bool) -> None:
        self.has_errors = has_errors

    def to_markdown(self) -> str:
        return "# data report\n- 3 duplicates"

    def save(self, folder: Path, figures: bool = True) -> Path:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "report.md").write_text(self.to_markdown())
        return Path(folder)

    def figures(self) -> dict:
        from lightning_tricks.utilities.plots import new_figure

        figure = new_figure()
        figure.subplots().bar([0, 1], [3, 4])
        return {"balance": figure}


@pytest.fixture
def fake_inspection(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Stand in for lightning_tricks.inspection: this tests the hook, not the report (tests/test_inspection.py)."""
    calls: list[dict] = []

    def inspect_data(source: Any, **kwargs: Any) -> FakeReport:
        calls.append({"source": source, **kwargs, "gathered": kwargs["all_gather"]("x")})
        return FakeReport(has_errors=True)

    monkeypatch.setitem(sys.modules, "lightning_tricks.inspection", types.SimpleNamespace(inspect_data=inspect_data))
    return calls


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # no ModelCheckpoint in the resumed run
def test_fit_start_report_runs_once_and_not_again_on_resume(tmp_path: Path, fake_inspection: list[dict]) -> None:
    dm = DigitsDataModule(seed=0)
    model = mlp()
    first = DataInspection(splits=["val"], at_fit_end=False)
    logger = CSVLogger(tmp_path, name="csv", version="")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.warns(UserWarning, match="the data report found errors"):
        trainer(tmp_path, [first, checkpoint], logger=logger, enable_checkpointing=True).fit(model, datamodule=dm)
    (call,) = fake_inspection
    # The run's own loaders, not the datamodule (whose setup Lightning already ran once for this fit).
    assert sorted(call["source"]) == ["test", "train", "val"]
    assert call["source"]["val"].dataset is dm.val_dataloader().dataset
    assert call["rank"] == 0 and call["world_size"] == 1 and call["gathered"] == ["x"]
    assert isinstance(first.report, FakeReport) and first.ranking == {}  # at_fit_end=False: no ranking
    assert (tmp_path / "csv" / "data_inspection" / "report" / "report.md").is_file()
    assert (tmp_path / "csv" / "data_inspection" / "report" / "balance.png").is_file()
    assert list((tmp_path / "csv" / "media").glob("tricks_data_inspection_report_balance_step*.png"))
    resumed = DataInspection(splits=["val"], at_fit_end=False)
    trainer(tmp_path, [resumed], max_epochs=3).fit(
        mlp(), datamodule=DigitsDataModule(seed=0), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert len(fake_inspection) == 1 and resumed.reported and resumed.report is None


def test_resume_keeps_the_last_ranking_summary(tmp_path: Path) -> None:
    first = DataInspection(splits=["val"], top_k=4, at_fit_start=False, every_n_epochs=1)
    trainer(tmp_path, [first, ModelCheckpoint(dirpath=tmp_path, save_last=True)], enable_checkpointing=True).fit(
        mlp(), datamodule=DigitsDataModule(seed=0)
    )
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    (saved,) = [v for k, v in state.items() if k.startswith("DataInspection")]
    assert saved["summaries"]["val"]["top"] == first.ranking["val"].top and saved["summaries"]["val"]["count"] == 270
    resumed = DataInspection(splits=["val"], top_k=4, at_fit_start=False)
    resumed.load_state_dict(saved)
    assert resumed.summaries == saved["summaries"] and resumed.reported is False


def test_the_real_data_report_at_fit_start(tmp_path: Path) -> None:
    pytest.importorskip("lightning_tricks.inspection")
    dm = DigitsDataModule(seed=0)
    callback = DataInspection(splits=["val"], top_k=4)
    trainer(tmp_path, [callback], max_epochs=1, logger=CSVLogger(tmp_path, name="csv", version="")).fit(
        mlp(), datamodule=dm
    )
    report = callback.report
    assert report is not None and not report.has_errors  # digits: no NaN, no leakage between its splits
    assert {"train", "val", "test"} <= set(report.to_dict()["splits"])
    folder = tmp_path / "csv" / "data_inspection" / "report"
    assert (folder / "report.md").read_text() == report.to_markdown()
    pictures = {p.stem for p in folder.glob("*.png")}
    assert pictures and pictures == set(report.figures())
    assert len(list((tmp_path / "csv" / "media").glob("tricks_data_inspection_report_*.png"))) == len(pictures)
    assert callback.ranking["val"].count == 270  # and the loss ranking still runs at the end


def test_a_custom_per_sample_loss_is_used_and_a_reduced_one_is_refused(tmp_path: Path) -> None:
    def doubled(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 2 * F.cross_entropy(outputs, targets, reduction="none")

    dm = DigitsDataModule(seed=0)
    model = mlp()
    callback = DataInspection(splits=["val"], at_fit_start=False, loss_fn=doubled)
    trainer(tmp_path, [callback], max_epochs=1).fit(model, datamodule=dm)
    x, y = dm.datasets["val"].tensors
    model.eval()
    with torch.no_grad():
        expected = doubled(model(x), y)
    assert torch.allclose(torch.tensor(callback.ranking["val"].columns["loss"]).float(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="one loss per sample"):
        trainer(tmp_path, [DataInspection(splits=["val"], at_fit_start=False, loss_fn=F.cross_entropy)],
                max_epochs=1).fit(mlp(), datamodule=dm)  # fmt: skip
