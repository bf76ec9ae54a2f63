"""What every recipe check shares: a result with figures, `on_failure`, once-at-fit-start, rank-consistent verdicts.

A check subclasses :class:`RecipeCheck` and implements :meth:`RecipeCheck.run`, which gets the
trainer and module at fit start (after set-up, before the sanity check and the first optimizer
step), runs on every rank, and returns a :class:`CheckResult`. The base class then makes the
verdict identical on all ranks, stores it as ``self.result``, logs its numbers under
``tricks/<name>/...`` and its figures through the media layer (rank zero), and raises
:class:`RecipeCheckError`, warns, or stays silent as ``on_failure`` says.

A verdict is one of three: *pass*, *FAIL* (evidence of a problem) or *INCONCLUSIVE* (the budget was
too small to decide, e.g. the loss was still falling when the steps ran out). Only a FAIL is a
failure for ``on_failure``; an inconclusive result is logged as a warning (info with
``on_failure="ignore"``) with the reason and the budget that would decide, never raised: a short
budget is not evidence of a bug, and a check that cries wolf teaches users to ignore it.

Verdicts are log records of the ``lightning_tricks`` loggers (rank zero): a pass at INFO, a failure
with ``on_failure="warn"`` at WARNING, so they read as one line each, without a source-file prefix, and
land in the run's log file under Hydra.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from lightning_tricks.utilities.loaders import require_loader
from lightning_tricks.utilities.media import log_image, log_scalars
from lightning_tricks.utilities.precision import run_precision, to_model
from lightning_tricks.utilities.protocol import ModelAdapter

ON_FAILURE = ("raise", "warn", "ignore")

log = logging.getLogger(__name__)


class RecipeCheckError(RuntimeError):
    """A recipe check failed with ``on_failure="raise"``; ``.result`` holds what it measured."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(f"[{result.name}] {result.message}")
        self.result = result


@dataclass
class CheckResult:
    """The outcome of one check: a verdict, the numbers behind it and a sentence a person can act on.

    ``passed`` is True for a pass only; ``inconclusive`` marks a check that could not decide within
    its budget (then ``passed`` is False but ``failed`` is False too). ``verdict`` names the three.

    >>> undecided = CheckResult("overfit_batch", False, "still falling", inconclusive=True)
    >>> undecided.verdict, undecided.status, undecided.passed, undecided.failed
    ('inconclusive', 'INCONCLUSIVE', False, False)
    >>> CheckResult("overfit_batch", False, "flat at every LR").status
    'FAIL'
    """

    name: str
    passed: bool
    message: str
    measured: float | None = None
    expected: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: matplotlib figures (e.g. a loss curve), logged as images and kept for reports
    figures: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the budget was too small to decide: neither a pass nor a failure
    inconclusive: bool = False

    def __post_init__(self) -> None:
        if self.inconclusive and self.passed:
            raise ValueError("A CheckResult cannot be both passed and inconclusive.")

    @property
    def failed(self) -> bool:
        """A FAIL: evidence of a problem (what ``on_failure`` acts on), not a budget too small to decide."""
        return not self.passed and not self.inconclusive

    @property
    def verdict(self) -> str:
        """``"pass"``, ``"fail"`` or ``"inconclusive"``."""
        return "pass" if self.passed else "inconclusive" if self.inconclusive else "fail"

    @property
    def status(self) -> str:
        return {"pass": "pass", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}[self.verdict]

    def scalars(self) -> dict[str, float]:
        """Numbers worth plotting: measured, expected, passed, inconclusive, and numeric details."""
        values: dict[str, float] = {"passed": float(self.passed), "inconclusive": float(self.inconclusive)}
        if self.measured is not None:
            values["measured"] = self.measured
        if self.expected is not None:
            values["expected"] = self.expected
        for key, value in self.details.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = float(value)
        return {f"tricks/{self.name}/{k}": v for k, v in values.items() if math.isfinite(v) or k == "measured"}


def check_on_failure(on_failure: str) -> str:
    if on_failure not in ON_FAILURE:
        raise ValueError(f"`on_failure` must be one of {', '.join(map(repr, ON_FAILURE))}, got {on_failure!r}.")
    return on_failure


class RecipeCheck(Callback):
    """Base of the recipe's checks; see the module docstring for the contract.

    Args:
        on_failure: ``"raise"`` a :class:`RecipeCheckError`, ``"warn"``, or ``"ignore"`` (result kept).
        run_on_resume: run again when the fit resumes from a checkpoint (default: only fresh runs).
        split_batch, loss_fn, output_layer, task: overrides of the model protocol
            (see :mod:`lightning_tricks.utilities.protocol`).
    """

    name: ClassVar[str] = "check"

    def __init__(
        self,
        on_failure: str = "raise",
        run_on_resume: bool = False,
        split_batch: Any = None,
        loss_fn: Any = None,
        output_layer: str | None = None,
        task: str | None = None,
    ) -> None:
        self.on_failure = check_on_failure(on_failure)
        self.run_on_resume = bool(run_on_resume)
        self.adapter = ModelAdapter(split_batch=split_batch, loss_fn=loss_fn, output_layer=output_layer, task=task)
        self.result: CheckResult | None = None

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        raise NotImplementedError

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None and not self.run_on_resume:
            return  # the checks are about the start of training; a resumed run has passed them
        run_initialisers(trainer, pl_module)
        self.execute(trainer, pl_module)

    def execute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        """Run the check now (every rank), record, log and act on the result."""
        with run_precision(trainer):  # the checks' forward passes as the run's own steps run them
            result = self.run(trainer, pl_module)
        return self.finish(trainer, result)

    def finish(self, trainer: pl.Trainer, result: CheckResult) -> CheckResult:
        """Make the verdict rank-consistent, keep it, log it, and raise/warn as ``on_failure`` says."""
        # Every rank must take the same decision (and all must raise together, or none): a failure on
        # any rank fails everywhere; a pass needs a pass on every rank; anything else is inconclusive.
        failed = bool(trainer.strategy.reduce_boolean_decision(result.failed, all=False))
        passed = not failed and bool(trainer.strategy.reduce_boolean_decision(result.passed, all=True))
        if failed and not result.failed:
            result.message += " (failed on another rank)"
        elif not failed and not passed and result.passed:
            result.message += " (inconclusive on another rank)"
        result.passed, result.inconclusive = passed, not passed and not failed
        self.result = result
        log_scalars(trainer, result.scalars())
        for key, figure in result.figures.items():
            log_image(trainer, f"tricks/{self.name}/{key}", figure)
        if result.passed:
            if trainer.is_global_zero:
                log.info("[%s] pass: %s", self.name, result.message)
        elif result.inconclusive:
            # Not a failure, so never raised; but said out loud, so nobody reads it as a pass.
            if trainer.is_global_zero:
                level = logging.INFO if self.on_failure == "ignore" else logging.WARNING
                log.log(level, "[%s] INCONCLUSIVE: %s", self.name, result.message)
        elif self.on_failure == "raise":
            raise RecipeCheckError(result)
        elif self.on_failure == "warn" and trainer.is_global_zero:
            log.warning("[%s] FAIL: %s", self.name, result.message)
        return result


def run_initialisers(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Let callbacks that change the model at fit start (``LastLayerBiasInit``) act before a check looks at it.

    They expose an idempotent ``initialise(trainer, pl_module)``; calling it here makes the result
    independent of the order of the Trainer's callbacks.
    """
    for callback in trainer.callbacks:
        initialise = getattr(callback, "initialise", None)
        if callable(initialise):
            initialise(trainer, pl_module)


def train_loader(trainer: pl.Trainer, pl_module: pl.LightningModule):
    """The training loader as the user gave it (to ``fit``, a datamodule, the module), not Lightning's copy."""
    return require_loader(trainer, pl_module, "train", "recipe check")


def val_loader(trainer: pl.Trainer, pl_module: pl.LightningModule):
    """The validation loader as the user gave it; a clear error when the run has none."""
    return require_loader(trainer, pl_module, "val", "recipe check")


def first_batches(loader: Any, n: int) -> list[Any]:
    """The first ``n`` batches of a loader, drawn without touching the run's RNG."""
    batches = []
    with isolate_rng():
        for batch in loader:
            batches.append(batch)
            if len(batches) == n:
                break
    return batches


def shared_batches(trainer: pl.Trainer, pl_module: pl.LightningModule, n: int, loader: Any = None) -> list[Any]:
    """Rank 0's first ``n`` training batches on every rank (broadcast), on the module's device."""
    batches = first_batches(loader if loader is not None else train_loader(trainer, pl_module), n)
    batches = trainer.strategy.broadcast(batches, src=0)
    return [to_model(trainer, b) for b in batches]


def as_float(value: torch.Tensor | float) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
