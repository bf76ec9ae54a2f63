"""`lightning-tricks preflight`: the recipe's before-you-train checks on the configured model and data.

Builds data and model as ``train`` does, runs :func:`lightning_tricks.preflight.run_preflight` with
the configured checks, writes the report into the run directory and exits 1 if a check failed.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightning_tricks.callbacks.recipe_check import RecipeCheck
from lightning_tricks.commands.console import quiet_unless_verbose
from lightning_tricks.commands.html_report import HtmlReport
from lightning_tricks.commands.run_log import logs_terminal
from lightning_tricks.commands.train import build_data_and_model, instantiate_group
from lightning_tricks.commands.usage_errors import exits_on_usage_error
from lightning_tricks.preflight import PreflightReport, run_preflight


def preflight(cfg: DictConfig) -> PreflightReport:
    """The `preflight` command's work: build the configured data and model, run the configured checks."""
    datamodule, model = build_data_and_model(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    checks = [c for c in callbacks if isinstance(c, RecipeCheck) and c.name != "training_health"]
    loggers = instantiate_group(cfg.get("logger"), "logger")
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    # The run's length goes along: configure_optimizers may size a schedule from it (run_preflight stops at fit start).
    # No model summary or progress bar: they would describe a training run that does not happen.
    dropped = ("_target_", "enable_model_summary", "enable_progress_bar")
    trainer_cfg = {k: v for k, v in trainer_cfg.items() if k not in dropped}
    report = run_preflight(model, datamodule, checks=checks, **{**trainer_cfg, "logger": loggers or False})
    if rank_zero_only.rank == 0:
        report.save(cfg.paths.output_dir)
        write_html(report, Path(cfg.paths.output_dir))
    return report


def write_html(report: PreflightReport, folder: Path) -> Path:
    """``report.html``: the verdict, each check's verdict with its evidence, the checks' figures."""
    headline = report.to_markdown().splitlines()[0].lstrip("# ")  # "Preflight: all checks passed"
    page = HtmlReport(f"lightning-tricks {headline[0].lower()}{headline[1:]}", str(folder))
    page.section("Checks")
    page.verdicts(report.results)
    page.figures({f"{r.name}: {key}": figure for r in report.results for key, figure in r.figures.items()})
    page.section("Files")
    page.table(
        ["file", "what"],
        [
            [str(folder / "preflight.md"), "this table, Markdown"],
            [str(folder / "preflight.json"), "every number of every check"],
        ],
    )
    page.text("Exit code 0 when no check failed (an inconclusive check is not a failure), 1 otherwise.")
    return page.save(folder)


@hydra.main(version_base="1.3", config_path="pkg://lightning_tricks.conf", config_name="preflight")
@logs_terminal
@exits_on_usage_error
@quiet_unless_verbose
def main(cfg: DictConfig) -> None:
    report = preflight(cfg)
    if rank_zero_only.rank == 0:
        from rich.console import Console
        from rich.markdown import Markdown

        Console(soft_wrap=True).print(Markdown(report.to_markdown()))
        print(f"report: {Path(cfg.paths.output_dir) / 'preflight.md'}")
        print(f"report: {Path(cfg.paths.output_dir) / 'report.html'}")
    if not report.passed:
        raise SystemExit(1)
