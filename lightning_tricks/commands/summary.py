"""What a run ends with: final metrics, where its files are, and how to open them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

#: the file :meth:`RunSummary.save` writes in the run folder
FILE_NAME = "summary.json"


@dataclass
class RunSummary:
    """Final metrics of a run and the places its logs and checkpoints were written."""

    metrics: dict[str, float]
    output_dir: Path
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    evaluated: str | None = None
    #: (what, path, how to open it) per logger
    logs: list[tuple[str, str, str]] = field(default_factory=list)
    #: "model vs human" lines of HumanBaseline callbacks
    humans: list[str] = field(default_factory=list)
    #: "finished", or "interrupted" (a signal stopped it)
    status: str = "finished"
    #: the command line that resumes an interrupted run
    resume: str | None = None
    #: the run's ``report.html`` (verdicts, curves, figures, this summary), where one was written
    report: str | None = None

    @staticmethod
    def checkpoints_of(trainer: pl.Trainer) -> tuple[str | None, str | None]:
        """(best, last) checkpoint files of the trainer's ModelCheckpoints, None where there is none.

        best: the best file of the first ModelCheckpoint that monitors a metric. last: the newest file of
        those that monitor none (Lightning keeps such a callback's latest save as its ``best_model_path``;
        ``conf/callbacks/last_checkpoint.yaml`` is one). A monitoring callback's ``save_last`` file is not
        taken: Lightning 2.6 rewrites it only along with a new top-k file, so it may be an earlier epoch.
        """
        callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        best = next((c.best_model_path for c in callbacks if c.monitor is not None and c.best_model_path), None)
        latest = [Path(c.best_model_path) for c in callbacks if c.monitor is None and c.best_model_path]
        # Newest on disk, as Lightning's own ckpt_path="last" picks among its candidates.
        last = max((p for p in latest if p.is_file()), key=lambda p: p.stat().st_mtime_ns, default=None)
        return best, str(last) if last else None

    @classmethod
    def from_trainer(
        cls,
        trainer: pl.Trainer,
        metrics: dict[str, float],
        evaluated: str | None,
        checkpoints: tuple[str | None, str | None] | None = None,
        status: str = "finished",
    ) -> RunSummary:
        best, last = checkpoints or cls.checkpoints_of(trainer)
        logs = []
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                run = logger.experiment
                run_dir = str(Path(run.dir).parent)
                offline = getattr(run.settings, "mode", "") == "offline" or getattr(run, "offline", False)
                # A resumed run (same id) adds an offline folder per session: sync them all, into the one run.
                sessions = sorted(Path(run_dir).parent.glob(f"*run-*-{run.id}"))
                synced = run_dir if len(sessions) <= 1 else " ".join(str(p) for p in sessions)
                how = f"wandb sync {synced}" if offline else str(getattr(run, "url", "") or "")
                logs.append(("W&B run", run_dir, how))
            elif isinstance(logger, TensorBoardLogger):
                logs.append(("TensorBoard", str(logger.log_dir), f"tensorboard --logdir {logger.log_dir}"))
            elif isinstance(logger, CSVLogger):
                path = Path(logger.log_dir) / "metrics.csv"
                # Not "pandas.read_csv": pandas is not a dependency of the package.
                logs.append(("CSV metrics", str(path), "any CSV reader (one row per logging step)"))
        humans = [cb.summary() for cb in trainer.callbacks if hasattr(cb, "summary") and hasattr(cb, "model_value")]
        return cls(
            humans=humans,
            metrics={k: float(v) for k, v in metrics.items()},
            output_dir=Path(trainer.default_root_dir),
            best_checkpoint=best,
            last_checkpoint=last,
            evaluated=evaluated,
            logs=logs,
            status=status,
        )

    def save(self, folder: str | Path) -> Path:
        """Write the summary as ``<folder>/summary.json`` (a multirun's overview reads its jobs' files)."""
        path = Path(folder) / FILE_NAME
        path.write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")
        return path

    def print(self) -> None:
        """Print the summary as a Rich table (rank zero only)."""
        from lightning.pytorch.utilities import rank_zero_only

        if rank_zero_only.rank != 0:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"lightning-tricks: run {self.status} (evaluated: {self.evaluated or 'final weights'})")
        table.add_column("split")
        for name in ("loss", "acc", "mae"):
            if any(k.endswith(f"/{name}") for k in self.metrics):
                table.add_column(name, justify="right")
        columns = [c.header for c in table.columns[1:]]
        for split in ("val", "test"):
            if any(k.startswith(f"{split}/") for k in self.metrics):
                row = [f"{self.metrics[f'{split}/{c}']:.4f}" if f"{split}/{c}" in self.metrics else "" for c in columns]
                table.add_row(split, *row)
        console = Console(soft_wrap=True)  # long paths stay copyable on one line
        console.print(table)
        for line in self.humans:
            console.print(f"human        {line}")
        console.print(f"outputs      {self.output_dir}")
        if self.best_checkpoint:
            console.print(f"best ckpt    {self.best_checkpoint}")
        if self.last_checkpoint:
            hint = "" if self.resume else "  (resume: ckpt_path=<this file>)"
            console.print(f"last ckpt    {self.last_checkpoint}{hint}")
        for what, path, how in self.logs:
            console.print(f"{what:<12} {path}\n{'':<12} open: {how}")
        if self.report:
            console.print(f"report       {self.report}")
