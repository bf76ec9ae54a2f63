"""The `inspect` command: ``inspect_data`` on the configured data module, report into the run directory.

``lightning-tricks inspect data=mnist1d strict=true`` (or ``python -m lightning_tricks.commands.inspect``)
prints the Markdown report, writes ``report.md``, ``report.json`` and figures under
``paths.output_dir`` and, with ``strict=true``, exits with code 1 on leakage or NaN/Inf.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_tricks.commands.console import quiet_unless_verbose
from lightning_tricks.commands.html_report import HtmlReport
from lightning_tricks.commands.run_log import logs_terminal
from lightning_tricks.commands.usage_errors import exits_on_usage_error
from lightning_tricks.inspection import DataReport, inspect_data


def inspect(cfg: DictConfig) -> DataReport:
    """The command's work: build the configured data module, scan it, save the report."""
    pl.seed_everything(cfg.seed, verbose=False)  # the split of the data modules depends on it
    datamodule = instantiate(cfg.data, _convert_="all")
    report = inspect_data(
        datamodule,
        splits=tuple(OmegaConf.to_container(cfg.splits, resolve=True)),
        batch_size=cfg.batch_size,
        outlier_threshold=cfg.outlier_threshold,
        near_duplicates=cfg.near_duplicates,
        near_duplicate_max_samples=cfg.near_duplicate_max_samples,
        near_duplicate_threshold=cfg.near_duplicate_threshold,
    )
    report.save(cfg.paths.output_dir, figures=cfg.figures)
    write_html(report, Path(cfg.paths.output_dir))
    return report


def write_html(report: DataReport, folder: Path) -> Path:
    """``report.html``: the Markdown report (findings, tables) and the figures ``save`` wrote beside it."""
    page = HtmlReport("lightning-tricks inspect", str(folder))
    page.markdown(report.to_markdown())
    # The figures as saved (not drawn twice): the folder is this command's own, its PNGs are the report's.
    figures = {path.stem: path for path in sorted(folder.glob("*.png"))}
    if figures:
        page.section("Figures")
        page.figures(figures)
    return page.save(folder)


@hydra.main(version_base="1.3", config_path="pkg://lightning_tricks.conf", config_name="inspect")
@logs_terminal
@exits_on_usage_error
@quiet_unless_verbose
def main(cfg: DictConfig) -> None:
    report = inspect(cfg)
    from rich.console import Console
    from rich.markdown import Markdown

    Console(soft_wrap=True).print(Markdown(report.to_markdown()))
    print(f"report: {Path(cfg.paths.output_dir) / 'report.md'}")
    print(f"report: {Path(cfg.paths.output_dir) / 'report.html'}")
    if cfg.strict and report.has_errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
