"""`lightning-tricks ensemble`: average the predictions of several checkpoints; ensemble vs each member.

``lightning-tricks ensemble checkpoints='outputs/train-multirun/*/*/checkpoints/epoch*.ckpt'`` (or a
list, ``checkpoints='[a.ckpt,b.ckpt]'``) loads each checkpoint with ``torch.load(weights_only=True)``
into the configured model (``strict=True``), evaluates every member and the ensemble (mean predicted
probability) on the test split in one process, prints a table and writes ``ensemble.json`` and
``ensemble.csv`` into the run directory.

The data split must be the one the members were trained with, or the "test" set holds training
samples. With ``from_run=true`` (default) ``seed``, ``data`` and ``model`` are taken from the Hydra
config saved with the members' run (``<run>/.hydra/config.yaml``, found above the checkpoint), and
members whose runs used different data configs (e.g. a multirun over ``seed`` without a fixed
``data.seed``) are refused before any work. ``from_run=false`` uses the command line's.

A checkpoint that cannot be used (missing, corrupted, unsafe, another architecture) is reported as a
failed member and the others are evaluated; the exit code is then 1 (``strict=false``: 0). No
loadable member at all is an error.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_tricks.commands.console import quiet_unless_verbose
from lightning_tricks.commands.html_report import HtmlReport
from lightning_tricks.commands.run_log import logs_terminal
from lightning_tricks.commands.usage_errors import exits_on_usage_error
from lightning_tricks.ensembling import EnsembleReport, evaluate_checkpoints, expand_checkpoints
from lightning_tricks.utilities.arguments import UsageError
from lightning_tricks.utilities.protocol import ModelAdapter

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Data options that do not change which samples are in which split: members may differ in them.
NOT_THE_SPLIT = ("batch_size", "num_workers", "augmentation", "pin_memory", "persistent_workers")


def run_config_file(checkpoint: str | Path, levels: int = 3) -> Path | None:
    """The ``.hydra/config.yaml`` of the run a checkpoint belongs to (searched up to ``levels`` folders up)."""
    for folder in list(Path(checkpoint).resolve().parents)[:levels]:
        candidate = folder / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def _node(config: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.to_container(config[key], resolve=True)
    except Exception:  # an interpolation that only resolves inside that run (hydra:...): keep it as written
        return OmegaConf.to_container(config[key], resolve=False)


def with_run_config(cfg: DictConfig, paths: list[str]) -> tuple[DictConfig, str | None]:
    """``cfg`` with ``seed``, ``data`` and ``model`` of the members' saved run config, and that file.

    Raises ``UsageError`` naming two members whose runs used different data (another split); options
    that do not change the split (``NOT_THE_SPLIT``: batch size, workers, augmentation) may differ.
    """
    found = {p: f for p in paths if (f := run_config_file(p)) is not None}
    if not found:
        return cfg, None
    runs = {p: OmegaConf.load(f) for p, f in found.items()}
    first_path, first = next(iter(runs.items()))
    data = _node(first, "data")
    for path, run in runs.items():
        other = _node(run, "data")
        keys = sorted(k for k in set(data) | set(other) if k not in NOT_THE_SPLIT and data.get(k) != other.get(k))
        if keys:
            raise UsageError(
                f"The members were trained on different data: {found[first_path]} and {found[path]} differ in "
                f"data.{', data.'.join(keys)} ({[data.get(k) for k in keys]} vs {[other.get(k) for k in keys]}), "
                "so one member's test set holds another's training samples. Train the members with the same "
                "data split (e.g. `-m seed=0,1,2 data.seed=42`), or pass from_run=false to evaluate anyway."
            )
    missing = [p for p in paths if p not in found]
    if missing:
        log.warning("ensemble: no saved run config next to %s; using %s for them.", missing, found[first_path])
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.seed = first.seed
        cfg.data = data
        cfg.model = _node(first, "model")
    return cfg, str(found[first_path])


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def ensemble(cfg: DictConfig) -> EnsembleReport:
    """The command's work: expand the checkpoints, build data and model, evaluate, save the report."""
    from lightning_tricks.commands.train import build_data_and_model

    if cfg.split not in SPLITS:
        raise UsageError(f"`split` must be one of {SPLITS}, got {cfg.split!r}.")
    checkpoints = cfg.checkpoints
    if OmegaConf.is_list(checkpoints):
        checkpoints = OmegaConf.to_container(checkpoints, resolve=True)
    paths = expand_checkpoints(checkpoints)
    config_from = None
    if cfg.from_run:
        cfg, config_from = with_run_config(cfg, paths)
    datamodule, template = build_data_and_model(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit" if cfg.split != "test" else "test")
    loader = getattr(datamodule, f"{cfg.split}_dataloader")()
    device = device_of(cfg.device)
    task = ModelAdapter().task_of(template)
    report = evaluate_checkpoints(paths, template.to(device), loader, task, device=device)
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ensemble.json").write_text(
        json.dumps({**report.to_dict(), "split": cfg.split, "config_from": config_from}, indent=2)
    )
    with (folder / "ensemble.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(report.columns)
        writer.writerows(report.rows())
    write_html(report, cfg.split, folder)
    return report


def write_html(report: EnsembleReport, split: str, folder: Path) -> Path:
    """``report.html``: every member and the ensemble on ``split``, the gains, the members that failed."""
    name = report.metric_name
    page = HtmlReport(f"lightning-tricks ensemble on {split} ({report.count} samples)", str(folder))
    page.section("Members and ensemble")
    page.table(["member", "status", "loss", name], report.rows())
    page.text(
        f"ensemble {name} {report.ensemble_metric:.4f} vs best member {report.best_member.metric:.4f} "
        f"(gain {report.metric_gain:+.4f}); loss {report.ensemble_loss:.4f} (gain {report.loss_gain:+.4f})"
    )
    if report.failures:
        page.section("Failed members")
        page.table(["checkpoint", "reason"], [[f.path, f.reason] for f in report.failures])
    return page.save(folder)


def print_report(report: EnsembleReport, split: str) -> None:
    from rich.console import Console
    from rich.table import Table

    name = report.metric_name
    table = Table(title=f"checkpoint ensemble on {split} ({report.count} samples)")
    for column in ("member", "status", "loss", name):
        table.add_column(column, overflow="fold", justify="left" if column in ("member", "status") else "right")
    best = report.best_member.path
    for member, status, loss, metric in report.rows():
        cells = ["" if v is None else f"{v:.4f}" for v in (loss, metric)]
        status = "ok, best member" if member == best else status
        table.add_row(member, status, *cells, style="bold" if member.startswith("ensemble of") else None)
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(
        f"ensemble {name} {report.ensemble_metric:.4f} vs best member {report.best_member.metric:.4f} "
        f"(gain {report.metric_gain:+.4f}); loss {report.ensemble_loss:.4f} (gain {report.loss_gain:+.4f})"
    )


@hydra.main(version_base="1.3", config_path="pkg://lightning_tricks.conf", config_name="ensemble")
@logs_terminal
@exits_on_usage_error
@quiet_unless_verbose
def main(cfg: DictConfig) -> None:
    report = ensemble(cfg)
    print_report(report, cfg.split)
    for failure in report.failures:
        print(f"failed member: {failure.path}: {failure.reason}")
    print(f"report: {Path(cfg.paths.output_dir) / 'ensemble.json'}")
    print(f"report: {Path(cfg.paths.output_dir) / 'report.html'}")
    if cfg.strict and report.failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
