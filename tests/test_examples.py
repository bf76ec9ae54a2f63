"""The examples run for real, end to end, as a user would run them (tiny settings, outputs in tmp_path)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
HYDRA_DIR = EXAMPLES / "my_hydra_config"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd`` (so nothing lands in the repository) and fail with its output if it fails."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def last_metric(metrics_csv: Path, name: str) -> float:
    values = [float(row[name]) for row in csv.DictReader(metrics_csv.open()) if row.get(name)]
    assert values, f"no {name} in {metrics_csv}"
    return values[-1]


def callback_states(ckpt: Path) -> dict[str, dict]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]


def assert_recipe_ran(output: str, log_dir: Path, states: dict[str, dict], epochs: int) -> None:
    """The default recipe's callbacks ran on the example's model: verdicts, numbers, pictures, tables."""
    for check in ("init_loss", "gradient_dependency", "overfit_batch", "input_independent_baseline", "shuffle"):
        assert f"[{check}] pass" in output, output[-3000:]
    assert "LastLayerBiasInit: task multiclass (inferred)" in output
    assert last_metric(log_dir / "metrics.csv", "tricks/full_loss/val") > 0  # FullDatasetLoss
    assert last_metric(log_dir / "metrics.csv", "tricks/init_loss/measured") > 0
    media = log_dir / "media"
    assert (media / "tricks_bias_init_priors_step0.png").is_file()
    assert list(media.glob("tricks_visualize_batch_0_inputs_step*.png"))  # VisualizeBatch
    rows = list(csv.DictReader((media / "tricks_prediction_dynamics_table.csv").open()))
    assert len(rows) == 16 * epochs and all((media / row["input"]).is_file() for row in rows)
    (dynamics,) = [state for key, state in states.items() if key.startswith("PredictionDynamics")]
    assert len(dynamics["history"]) == 16 * epochs


@pytest.mark.slow
def test_python_api(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, str(EXAMPLES / "python_api.py"), "--max-epochs", "2", "--out", str(out)]
    result = run(command, tmp_path)
    match = re.fullmatch(r"val_acc=(\S+)", result.stdout.strip().splitlines()[-1])
    assert match, result.stdout[-2000:]
    assert float(match.group(1)) > 0.5
    assert "checks: 6 of 6 passed" in result.stdout
    states = callback_states(out / "checkpoints" / "last.ckpt")
    assert states["SeedEverything"]["seed"] == 0
    assert_recipe_ran(result.stdout + result.stderr, out / "csv", states, epochs=2)


@pytest.mark.slow
def test_own_model_from_the_current_folder(tmp_path: Path) -> None:
    """`model._target_=mymodule.MyModel` run where mymodule.py is, with the installed script, no PYTHONPATH."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(EXAMPLES / "own_model" / "mymodule.py", project)
    script = Path(sys.executable).parent / "lightning-tricks"  # not `python -m`, which would add the folder itself
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run_dir = tmp_path / "run"
    overrides = ["model._target_=mymodule.MyModel", "model.hidden_sizes=[32]", "trainer.max_epochs=2", "logger=csv"]
    result = subprocess.run(
        [str(script), "train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=project,
        env={**env, "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"]["net.1.weight"].shape == (32, 64)  # the user's model, with the override
    assert last_metric(run_dir / "csv" / "metrics.csv", "val/acc") > 0.3
    assert "[init_loss] pass" in result.stdout and "lightning-tricks: run finished" in result.stdout


@pytest.mark.slow
def test_my_hydra_config_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(
        [
            sys.executable,
            "-m",
            "lightning_tricks",
            "train",
            "--config-dir",
            str(HYDRA_DIR),
            "--config-name",
            "my_train",
            "trainer.max_epochs=2",
            f"hydra.run.dir={run_dir}",
            "callbacks.rich_progress_bar=null",
        ],
        tmp_path,
    )
    # The composed config: our `train` with the user's overrides and the user's own callback.
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert cfg["data"]["_target_"] == "lightning_tricks.data.SyntheticClassificationDataModule"
    assert cfg["callbacks"]["seed_everything"]["deterministic"] == "warn"
    assert cfg["callbacks"]["seed_everything"]["workers"] is True  # the callback's other arguments stay ours
    assert cfg["callbacks"]["early_stopping"]["_target_"] == "lightning.pytorch.callbacks.EarlyStopping"
    # The user's callback ran: its state is in the checkpoint, with the user's patience.
    states = callback_states(run_dir / "checkpoints" / "last.ckpt")
    early = [state for key, state in states.items() if key.startswith("EarlyStopping")]
    assert len(early) == 1 and early[0]["patience"] == 5
    assert "SeedEverything" in states
    assert last_metric(run_dir / "csv" / "metrics.csv", "val/acc") > 0.5


@pytest.mark.slow
def test_my_hydra_config_instantiates_overrides(tmp_path: Path) -> None:
    """The overridden argument reaches the callback object, and the search path works without our CLI."""
    from hydra import compose, initialize_config_dir
    from lightning.pytorch.callbacks import EarlyStopping

    from lightning_tricks import SeedEverything
    from lightning_tricks.commands.train import build

    # Only the user's folder is given: our configs are found through `hydra.searchpath` in my_train.yaml.
    with initialize_config_dir(config_dir=str(HYDRA_DIR), version_base="1.3"):
        cfg = compose("my_train", overrides=[f"paths.output_dir={tmp_path}"])
    _, _, trainer = build(cfg)
    (seeder,) = (c for c in trainer.callbacks if isinstance(c, SeedEverything))
    (early,) = (c for c in trainer.callbacks if isinstance(c, EarlyStopping))
    assert seeder.deterministic == "warn" and seeder.workers and seeder.seed == cfg.seed
    assert early.monitor == "val/loss" and early.patience == 5
    assert trainer.max_epochs == 5


@pytest.mark.slow
def test_lightning_cli(tmp_path: Path) -> None:
    result = run(
        [
            sys.executable,
            str(EXAMPLES / "lightning_cli.py"),
            "fit",
            "--config",
            str(EXAMPLES / "lightning_cli.yaml"),
            "--trainer.max_epochs=2",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    log_dir = tmp_path / "lightning_logs" / "version_0"
    assert (log_dir / "config.yaml").is_file()  # LightningCLI's record of the full config
    assert last_metric(log_dir / "metrics.csv", "val/acc") > 0.5
    ckpt = torch.load(log_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert_recipe_ran(result.stdout + result.stderr, log_dir, ckpt["callbacks"], epochs=2)
    seed_keys = [key for key in ckpt["callbacks"] if "SeedEverything" in key]
    assert len(seed_keys) == 1
    assert ckpt["callbacks"][seed_keys[0]]["seed"] == 0
    # The data module's attributes were linked into the model's constructor.
    hparams = ckpt["hyper_parameters"]
    assert tuple(hparams["input_shape"]) == (1, 8, 8) and hparams["num_outputs"] == 10
    # The optimizer configured under `model.optimizer` (a typed factory) is the one that trained.
    assert [group["lr"] for group in ckpt["optimizer_states"][0]["param_groups"]] == [0.003]
