"""The end of a multirun (``lightning-tricks train -m seed=0,1,2``): each final metric over the jobs, as
mean ± std, instead of N summaries printed one after another.

:class:`MultirunOverview` is a Hydra callback (``hydra.callbacks`` in ``conf/train.yaml``). When the last
job has finished it reads every job's ``summary.json`` (written by ``train``) and

* writes ``overview.csv`` (metric, mean, std, n, one column per job) and ``overview.png`` (each job's
  value and the mean ± std, per metric) into the sweep folder;
* prints the table;
* with a W&B logger, logs both to an ``overview`` run in the jobs' group.

The std is the sample standard deviation (n - 1), the usual spread over seeds; 0 for one job.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightning_tricks.commands.summary import FILE_NAME
from lightning_tricks.commands.wandb_runs import sweep_group, wandb_nodes
from lightning_tricks.utilities.media import wandb_files_in_run
from lightning_tricks.utilities.plots import new_figure


@dataclass
class Overview:
    """Final metrics of a multirun's jobs: ``jobs`` (a label per job) and ``values[metric][job]``."""

    folder: Path
    jobs: list[str]
    values: dict[str, list[float]]

    def mean_std(self, metric: str) -> tuple[float, float, int]:
        values = [v for v in self.values[metric] if math.isfinite(v)]
        n = len(values)
        mean = sum(values) / n if n else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return mean, std, n

    def rows(self) -> list[list[Any]]:
        """One row per metric: metric, mean, std, n, then each job's value."""
        return [[metric, *self.mean_std(metric), *values] for metric, values in self.values.items()]

    @property
    def columns(self) -> list[str]:
        return ["metric", "mean", "std", "n", *self.jobs]

    def save(self) -> tuple[Path, Path]:
        table = self.folder / "overview.csv"
        with table.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows(self.rows())
        picture = self.folder / "overview.png"
        self.figure().savefig(picture)
        return table, picture

    def figure(self):
        """Per metric: each job's value (a dot) and the mean ± std (a bar)."""
        metrics = list(self.values)
        figure = new_figure(2.2 * max(len(metrics), 1) + 0.5, 3.2)
        axes = figure.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics, strict=True):
            mean, std, _ = self.mean_std(metric)
            ax.errorbar([0], [mean], yerr=[std], fmt="s", color="black", capsize=6)
            ax.plot([0.25] * len(self.values[metric]), self.values[metric], "o", alpha=0.7)
            ax.set_xlim(-0.6, 0.8)
            ax.set_xticks([])
            ax.set_title(metric, fontsize=9)
        figure.suptitle(f"{len(self.jobs)} jobs: each job (dots), mean ± std (square)", fontsize=9)
        return figure

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"lightning-tricks: multirun overview ({len(self.jobs)} jobs)")
        for column in ("metric", "mean ± std", *self.jobs):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for metric, values in self.values.items():
            mean, std, _ = self.mean_std(metric)
            table.add_row(metric, f"{mean:.4f} ± {std:.4f}", *(f"{v:.4f}" for v in values))
        console = Console(soft_wrap=True)
        console.print(table)
        console.print(f"overview     {self.folder / 'overview.csv'}  {self.folder / 'overview.png'}")


def read_overview(sweep: Path) -> Overview | None:
    """The jobs' final metrics under ``sweep`` (None when no job wrote a summary)."""
    files = sorted(sweep.rglob(FILE_NAME), key=lambda p: [int(s) if s.isdigit() else s for s in p.parent.parts])
    if not files:
        return None
    summaries = [json.loads(f.read_text()) for f in files]
    overrides = [_overrides(f.parent) for f in files]
    # A job's label: the overrides that differ between jobs (the swept values), else its folder.
    varying = {o for job in overrides for o in job if not all(o in other for other in overrides)}
    jobs = [
        " ".join(o for o in job if o in varying) or str(f.parent.relative_to(sweep))
        for job, f in zip(overrides, files, strict=True)
    ]
    metrics = sorted({k for s in summaries for k in s["metrics"]})
    values = {m: [float(s["metrics"].get(m, math.nan)) for s in summaries] for m in metrics}
    return Overview(folder=sweep, jobs=jobs, values=values)


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def log_to_wandb(overview: Overview, logger_cfg: Any) -> str | None:
    """An ``overview`` run in the jobs' group with the table and the picture; returns its folder."""
    nodes = wandb_nodes(logger_cfg)
    if not nodes:
        return None
    import wandb

    node = OmegaConf.to_container(nodes[0], resolve=False)
    group = node.get("group") if isinstance(node.get("group"), str) and "${" not in node["group"] else None
    run = wandb.init(
        project=node.get("project"),
        group=group or sweep_group(overview.folder),
        name="overview",
        job_type="multirun-overview",
        dir=str(overview.folder),
        mode="offline" if node.get("offline", False) else None,
        config={"jobs": overview.jobs},
        reinit="finish_previous",
    )
    try:
        with wandb_files_in_run(run):
            run.log(
                {
                    "multirun/overview": wandb.Table(columns=overview.columns, data=overview.rows()),
                    "multirun/overview_plot": wandb.Image(overview.figure()),
                }
            )
        for metric in overview.values:
            mean, std, n = overview.mean_std(metric)
            run.summary.update({f"{metric}/mean": mean, f"{metric}/std": std, f"{metric}/n": n})
        return str(Path(run.dir).parent)
    finally:
        run.finish()


class MultirunOverview(Callback):
    """Hydra callback: at the end of a multirun, the mean ± std over the jobs of each final metric."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        overview = read_overview(Path(config.hydra.sweep.dir))
        if overview is None:  # no job of ours ran (e.g. every job failed before its summary)
            return
        overview.save()
        overview.print()
        folder = log_to_wandb(overview, config.get("logger"))
        if folder:
            from rich.console import Console

            Console(soft_wrap=True).print(f"{'W&B run':<12} {folder}")
