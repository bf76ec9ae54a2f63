"""The installed product, as a user gets it: the wheel in a fresh venv *without* the dev extras, every
command and the Python and LightningCLI examples run from another folder.

A runtime import that only the dev venv has (pandas in `tune`'s report was one) fails here first.
The venv gets torch as the Makefile installs it (the pinned CPU wheel, first), then the wheel with
its `cli` extra (the LightningCLI example's, documented in the README), resolved under the project's
constraints file, as `make setup` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a source distribution leaves out: environments, caches, and what runs and tests write.
COPY_IGNORE = (".venv", ".git", "build", "dist", "*.egg-info", "outputs", "multirun", "wandb", "__pycache__", ".*cache",
               "lightning_logs", "media", "data_inspection", "*.ckpt")  # fmt: skip
# Small and fast: synthetic data, one epoch, the default recipe's checks on short budgets.
TINY = ["data=synthetic/classification", "data.num_samples=400", "trainer.max_epochs=1", "logger=csv"]


def sh(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv's bin folder with the built wheel installed (runtime and `cli` dependencies only)."""
    root = tmp_path_factory.mktemp("installed")
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources, and the checkout is
    # not the tests' to write in (another test process may be building or importing from it).
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*COPY_IGNORE))
    sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root), str(source)],
       cwd=root)  # fmt: skip
    (wheel,) = root.glob("lightning_tricks-*.whl")
    names = zipfile.ZipFile(wheel).namelist()  # the configs ship in the wheel (Hydra finds them there)
    assert {"lightning_tricks/conf/train.yaml", "lightning_tricks/conf/data/synthetic/imbalanced.yaml"} <= set(names)
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = str(root / "venv" / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-compile"]  # no .pyc: faster
    constraints = ["-c", str(REPO / "requirements" / "constraints.txt")]
    sh([*pip, "torch==2.13.0"], cwd=root, timeout=900)  # first and alone, as the Makefile does
    sh([*pip, *constraints, f"{wheel}[cli]"], cwd=root, timeout=900)
    frozen = {
        line.split("==")[0].split(" @ ")[0]
        for line in sh([python, "-m", "pip", "freeze"], cwd=root).stdout.lower().split()
    }
    assert not {"pytest", "pandas", "ruff"} & frozen  # no dev extras: what a user has
    return root / "venv" / "bin"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_command_and_example_runs_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    cli = str(installed / "lightning-tricks")
    assert sh([cli, "--version"], cwd=tmp_path).stdout.startswith("lightning-tricks ")
    conf = sh([str(installed / "python"), "-c", "import lightning_tricks.conf as c; print(c.__file__)"], cwd=tmp_path)
    assert conf.stdout.strip().startswith(str(installed.parent))  # the installed copy, not this checkout
    run = tmp_path / "run"
    out = sh([cli, "train", *TINY, f"hydra.run.dir={run}"], cwd=tmp_path).stdout
    assert "lightning-tricks: run finished" in out and (run / "report.html").is_file()
    assert "[init_loss] pass" in sh([cli, "preflight", "data=synthetic/classification"], cwd=tmp_path).stdout
    sh([cli, "inspect", f"hydra.run.dir={tmp_path / 'inspect'}"], cwd=tmp_path)
    assert list((tmp_path / "inspect").rglob("report.md"))
    sh([cli, "lr-find", *TINY[:2], f"hydra.run.dir={tmp_path / 'lr'}"], cwd=tmp_path)
    tune = tmp_path / "tune"
    sh([cli, "tune", "tune.n_trials=2", *TINY, f"hydra.run.dir={tune}"], cwd=tmp_path, timeout=900)
    assert (tune / "report.html").is_file()  # the report, written without pandas
    (ckpt,) = (run / "checkpoints").glob("epoch*.ckpt")
    sh([cli, "ensemble", f"checkpoints=[{ckpt},{run / 'checkpoints' / 'last.ckpt'}]",
        f"hydra.run.dir={tmp_path / 'ensemble'}"], cwd=tmp_path)  # fmt: skip
    python, examples = str(installed / "python"), REPO / "examples"
    api = sh([python, str(examples / "python_api.py"), "--max-epochs", "1", "--out", str(tmp_path / "api")],
             cwd=tmp_path).stdout  # fmt: skip
    assert api.strip().splitlines()[-1].startswith("val_acc=")
    sh([python, str(examples / "lightning_cli.py"), "fit", "--config", str(examples / "lightning_cli.yaml"),
        "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path / 'lcli'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'lcli'}", "--trainer.enable_progress_bar=false"],
       cwd=tmp_path)  # fmt: skip
