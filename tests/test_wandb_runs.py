"""W&B runs as a user finds them: growing tables logged at a linear cost, every staged file in the run's
folder (none in the home directory), pictures in the tables. Real W&B, offline, read back from its files."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.pyplot as plt
import pytest
from lightning.pytorch.loggers import WandbLogger

from lightning_tricks import PredictionDynamics
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP
from lightning_tricks.testing import OfflineRun, read_offline_run

KEY = "tricks/prediction_dynamics/table"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home directory: where W&B stages artifact files unless told otherwise."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.delenv(name, raising=False)
    return home


def fit_with_dynamics(root: Path, epochs: int, num_samples: int = 4) -> OfflineRun:
    logger = WandbLogger(project="lt-tests", save_dir=str(root), offline=True)
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=0, logger=logger,
                         callbacks=[PredictionDynamics(num_samples=num_samples)], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=root)  # fmt: skip
    trainer.fit(MLP(input_shape=(1, 8, 8), num_outputs=10), datamodule=DigitsDataModule(seed=0))
    files = Path(logger.experiment.dir)
    logger.experiment.finish()
    return read_offline_run(files.parent)


def table_files(run: OfflineRun) -> list[Path]:
    """Every table JSON W&B wrote for the run: its own files and the staged artifact copies."""
    own = list((run.path / "files" / "media" / "table").rglob("*.table.json"))
    return own + [f for f in run.staged_files() if f.read_bytes()[:1] == b"{"]


def rows_written(run: OfflineRun) -> int:
    return sum(len(json.loads(f.read_text())["data"]) for f in (run.path / "files" / "media" / "table").rglob("*.json"))


def test_prediction_table_grows_linearly_and_stays_in_the_run_folder(tmp_path: Path, home: Path) -> None:
    short, long = fit_with_dynamics(tmp_path / "short", 2), fit_with_dynamics(tmp_path / "long", 4)
    for run, epochs in ((short, 2), (long, 4)):
        table = run.table(KEY)
        assert [row["epoch"] for row in table] == [e for e in range(epochs) for _ in range(4)]
        # Each evaluation wrote its own 4 rows once: 4 x epochs rows on disk, not 4 x (1 + 2 + ... + epochs).
        assert rows_written(run) == 4 * epochs
        assert run.values(f"{KEY}/log_mode") == ["INCREMENTAL"] * epochs
        # The input column holds the pictures: 8x8 PNGs that W&B staged with the table.
        assert all(isinstance(row["input"], Path) for row in table)
        assert plt.imread(table[0]["input"]).shape[:2] == (8, 8)
        # Every staged file is in the run's folder, where `wandb sync` finds it and deleting the run removes it.
        assert run.staged_files() and all(run.path in f.parents and f.is_file() for f in run.staged_files())
    two, four = (sum(f.stat().st_size for f in table_files(run)) for run in (short, long))
    print(f"table bytes: 2 epochs {two}, 4 epochs {four}, ratio {four / two:.2f}")
    assert four < 2.2 * two  # linear: ~2x; the whole table at every evaluation gave ~2.6x here
    # Nothing of W&B's artifacts in the home directory (W&B's default: ~/.local/share/wandb/artifacts/staging).
    assert not (home / ".local").exists()
    assert [p for p in home.rglob("*") if p.is_file() and p.suffix != ".log"] == []  # W&B's process logs only


def test_a_long_run_starts_a_new_incremental_table_so_each_epoch_costs_the_same(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B lists every earlier increment in each row that logs an incremental table: unbounded, a run's W&B
    files grow with the square of its length. After INCREMENTS_PER_TABLE increments a new table starts."""
    from lightning_tricks.utilities import media

    monkeypatch.setattr(media, "INCREMENTS_PER_TABLE", 2)
    run = fit_with_dynamics(tmp_path, 5)
    assert run.values(f"{KEY}/increment_num") == [0, 1, 0, 1, 0]
    assert max(len(paths) for paths in run.values(f"{KEY}/previous_increments_paths")) <= 1
    assert rows_written(run) == 4 * 5


def cli(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HOME": str(home)}
    for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "WANDB_DATA_DIR", "WANDB_CACHE_DIR"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_tricks", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_readme_multirun_named_grouped_with_an_overview_and_an_ensemble(tmp_path: Path, home: Path) -> None:
    """The README's `train -m seed=0,1,2` then `ensemble` of its checkpoints (2 seeds, tiny), read back."""
    sweep = tmp_path / "sweep"
    tiny = ["trainer.max_epochs=2", "+trainer.limit_train_batches=4", "callbacks.overfit_batch_check=null",
            "callbacks.input_independent_baseline=null"]  # fmt: skip
    proc = cli("train", "-m", "seed=0,1", *tiny, f"hydra.sweep.dir={sweep}", cwd=tmp_path, home=home)

    runs = [read_offline_run(d) for d in sorted(sweep.glob("[0-9]/wandb/offline-run-*"))]
    assert [run.config["seed"] for run in runs] == [0, 1]
    # Named by what differs, grouped by the sweep, tagged with the chosen options.
    assert [run.name.split()[0] for run in runs] == ["seed=0", "seed=1"]
    assert {run.group for run in runs} == {f"{tmp_path.name}/sweep"}
    assert all({"data=digits", "model=mlp", "recipe=default", "trainer=cpu"} <= set(run.tags) for run in runs)
    # Metrics declared: per-epoch ones against the epoch; the best validation loss kept as the minimum.
    for run in runs:
        assert run.metrics["val/loss"]["step_metric"] == "epoch" and "min" in run.metrics["val/loss"]["summary"]
        assert run.summary["val/loss"]["min"] <= run.summary["val/loss"]["last"]
        assert run.staged_files() and all(run.path in f.parents for f in run.staged_files())
    assert not (home / ".local").exists()  # no W&B staging in the home directory

    # One data split for every seed (data.seed is not the run's seed) ...
    assert {run.config["data"]["seed"] for run in runs} == {42}
    # ... and the overview: mean ± std over the jobs of each final metric, in the sweep folder and W&B.
    with (sweep / "overview.csv").open() as f:
        rows = {row["metric"]: row for row in csv.DictReader(f)}
    accs = [run.summary["test/acc"] for run in runs]
    assert float(rows["test/acc"]["mean"]) == pytest.approx(statistics.mean(accs), abs=1e-6)
    assert float(rows["test/acc"]["std"]) == pytest.approx(statistics.stdev(accs), abs=1e-6)
    assert rows["test/acc"]["n"] == "2" and [float(rows["test/acc"][j]) for j in ("seed=0", "seed=1")] == pytest.approx(
        accs
    )
    assert plt.imread(sweep / "overview.png").shape[0] > 100
    assert "multirun overview (2 jobs)" in proc.stdout and "test/acc" in proc.stdout
    (overview,) = [read_offline_run(d) for d in sweep.glob("wandb/offline-run-*")]
    assert overview.name == "overview" and overview.group == runs[0].group
    assert overview.summary["test/acc/mean"] == pytest.approx(statistics.mean(accs), abs=1e-6)
    assert [row["metric"] for row in overview.table("multirun/overview")] == list(rows)

    # The README's ensemble of the multirun's checkpoints: accepted (one split), evaluated.
    out = tmp_path / "ensemble"
    glob = f"{sweep}/*/checkpoints/epoch*.ckpt"
    cli("ensemble", f"checkpoints={glob}", f"hydra.run.dir={out}", cwd=tmp_path, home=home)
    report = json.loads((out / "ensemble.json").read_text())
    assert len(report["members"]) == 2 and report["failures"] == []
