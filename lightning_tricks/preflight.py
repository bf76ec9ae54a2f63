"""The recipe's "before you train" checks as one function, one pytest helper and one command.

``run_preflight(model, datamodule)`` runs the checks (callbacks from :mod:`lightning_tricks.callbacks`)
through a real ``Trainer`` that stops before its first step — the same code that runs when the
checks are callbacks of your training run — and returns a :class:`PreflightReport`.
``assert_preflight`` raises with the report when a check fails, for your test suite.
``lightning-tricks preflight [overrides]`` (:mod:`lightning_tricks.commands.preflight`) does it on a
configured model and data, writes ``preflight.md``/``preflight.json``/figures into the run directory
and exits non-zero on failure.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_tricks.callbacks.gradient_dependency_probe import GradientDependencyProbe
from lightning_tricks.callbacks.init_loss_check import InitLossCheck
from lightning_tricks.callbacks.input_independent_baseline import InputIndependentBaseline
from lightning_tricks.callbacks.overfit_batch_check import OverfitBatchCheck
from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, run_initialisers
from lightning_tricks.callbacks.shuffle_check import ShuffleCheck
from lightning_tricks.utilities.media import log_table
from lightning_tricks.utilities.protocol import AdapterError


def default_checks() -> list[RecipeCheck]:
    """Checks 1-5 with their defaults: init loss, gradient dependency, overfit one batch, baseline, shuffle."""
    return [InitLossCheck(), GradientDependencyProbe(), OverfitBatchCheck(), InputIndependentBaseline(), ShuffleCheck()]


@dataclass
class PreflightReport:
    """Per-check results, with Markdown/JSON renderings and the figures the checks drew."""

    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        """No check failed. An inconclusive check is not a failure (the budget was too small to decide)."""
        return not self.failed

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.failed]

    @property
    def inconclusive(self) -> list[CheckResult]:
        """Checks whose budget was too small to decide; each message says what budget would."""
        return [r for r in self.results if r.inconclusive]

    def __getitem__(self, name: str) -> CheckResult:
        return next(r for r in self.results if r.name == name)

    def to_markdown(self) -> str:
        def number(x: float | None) -> str:
            return "" if x is None else f"{x:.4g}"

        total, failed, undecided = len(self.results), len(self.failed), len(self.inconclusive)
        if failed:
            verdict = f"{failed} of {total} checks failed"
        elif undecided:
            verdict = "no check failed"
        else:
            verdict = "all checks passed"
        if undecided:
            verdict += f", {undecided} inconclusive"
        lines = [
            f"# Preflight: {verdict}",
            "",
            "| check | status | measured | expected | finding |",
            "|---|---|---|---|---|",
        ]
        for r in self.results:
            message = r.message.replace("|", "\\|")
            lines.append(f"| {r.name} | {r.status} | {number(r.measured)} | {number(r.expected)} | {message} |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return {
            "passed": self.passed,
            "checks": [
                {
                    "name": r.name,
                    "passed": r.passed,
                    "verdict": r.verdict,
                    "message": r.message,
                    "measured": clean(r.measured),
                    "expected": clean(r.expected),
                    "details": {k: clean(v) for k, v in r.details.items()},
                }
                for r in self.results
            ],
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``preflight.md``, ``preflight.json`` and ``preflight_<check>_<figure>.png``; return the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "preflight.md").write_text(self.to_markdown())
        (folder / "preflight.json").write_text(json.dumps(self.to_dict(), indent=2))
        for r in self.results:
            for key, figure in r.figures.items():
                figure.savefig(folder / f"preflight_{r.name}_{key}.png")
        return folder

    def __str__(self) -> str:
        return self.to_markdown()


class _RunChecks(Callback):
    """Runs each check at fit start and keeps going when one fails or crashes (the report says so)."""

    def __init__(self, checks: Sequence[RecipeCheck]) -> None:
        self.checks = list(checks)
        self.results: list[CheckResult] = []

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The fit ends before its first step: Lightning's fit loop checks `should_stop` before it starts.
        trainer.should_stop = True
        run_initialisers(trainer, pl_module)
        for check in self.checks:
            on_failure, check.on_failure = check.on_failure, "ignore"
            try:
                self.results.append(check.execute(trainer, pl_module))
            except AdapterError:
                raise  # the model cannot be checked as configured: that is the user's to fix, not a finding
            except Exception as err:  # a crash on this model is a finding of this check
                message = f"the check crashed: {type(err).__name__}: {err}"
                self.results.append(check.finish(trainer, CheckResult(check.name, False, message)))
            finally:
                check.on_failure = on_failure
        # The report as one table (a sortable W&B table, TensorBoard text, or a CSV file).
        rows = [[r.name, r.status, r.measured, r.expected, r.message] for r in self.results]
        log_table(trainer, "tricks/preflight/report", ["check", "status", "measured", "expected", "finding"], rows)


def run_preflight(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule | None = None,
    checks: Sequence[RecipeCheck] | None = None,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    **trainer_kwargs: Any,
) -> PreflightReport:
    """Run the recipe's checks on ``model`` and its data; return the report (nothing is trained or changed).

    ``trainer_kwargs`` go to the ``Trainer`` (e.g. ``accelerator="gpu"``, ``devices=2, strategy="ddp"``,
    ``logger=WandbLogger(...)`` to log the checks' numbers and figures). Give it the run's ``max_epochs``
    / ``max_steps`` (default: one epoch): ``configure_optimizers`` runs as in the real run, and a
    scheduler sized from ``trainer.estimated_stepping_batches`` (OneCycleLR) needs a length. The fit
    stops at fit start, after the checks, whatever the length; ``min_epochs``/``min_steps`` are ignored.
    """
    runner = _RunChecks(default_checks() if checks is None else checks)
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **trainer_kwargs,
        # The checks run at fit start and then stop the fit (`_RunChecks`): no training step follows.
        # Not max_steps=0, which made estimated_stepping_batches 0 and OneCycleLR(total_steps=0) fail.
        "min_epochs": None,
        "min_steps": None,
    }
    if "max_epochs" not in settings and "max_steps" not in settings:
        settings["max_epochs"] = 1  # Lightning would pick 1000 epochs, with a warning
    settings["callbacks"] = [*settings.get("callbacks", []), runner]
    # Without a folder of the user's, files the Trainer or media layer would write go to a temporary
    # one: the figures stay in the report (report.save writes them where the user wants).
    with tempfile.TemporaryDirectory(prefix="lt-preflight-") as scratch:
        settings.setdefault("default_root_dir", scratch)
        trainer = pl.Trainer(**settings)
        trainer.fit(model, datamodule=datamodule, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders)
    return PreflightReport(runner.results)


def assert_preflight(
    model: pl.LightningModule, datamodule: pl.LightningDataModule | None = None, **kwargs: Any
) -> PreflightReport:
    """``run_preflight`` for test suites: raises ``AssertionError`` with the Markdown report on any failure."""
    report = run_preflight(model, datamodule, **kwargs)
    if not report.passed:
        raise AssertionError("\n" + report.to_markdown())
    return report
