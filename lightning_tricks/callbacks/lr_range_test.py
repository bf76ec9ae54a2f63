"""Recipe 3.4: find the learning rate with a range test that leaves the run exactly as it was.

Lightning's ``LearningRateFinder`` trains the *real* model through the Trainer's own loop and then
restores a temporary checkpoint through private internals: on a resumed run that wipes the loaded
training state (the run restarts at step 0), and it reads losses from rank 0 only. Here the sweep
is a plain loop over the module's forward and loss with a *fresh copy* of the run's optimizer (same
class, hyper-parameters and param groups, empty state). Weights, buffers, gradients, modes and RNG
are restored afterwards (:func:`~lightning_tricks.utilities.isolation.preserved`), the Trainer's loops, the
user's optimizer and schedulers are never touched, and under DDP gradients and losses are averaged
across ranks, so every rank sweeps the same model and reads the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullLocator
from torch import nn
from typing_extensions import override

from lightning_tricks.callbacks.lr_batch_scaling import scale_trainer_lr
from lightning_tricks.callbacks.recipe_check import train_loader
from lightning_tricks.functional.lr_range import (
    MODES,
    SUGGESTION_RULES,
    SuggestionRule,
    has_diverged,
    lr_sweep,
    relative_descent,
    resolve_rule,
    rule_name,
    smooth_centered,
    suggest,
)
from lightning_tricks.utilities.arguments import check_float, check_int
from lightning_tricks.utilities.isolation import configured_lrs, first_optimizer, preserved, schedulers_in
from lightning_tricks.utilities.media import log_image, log_scalars, log_table
from lightning_tricks.utilities.precision import run_precision, to_model
from lightning_tricks.utilities.protocol import ModelAdapter
from lightning_tricks.utilities.sharding import shard
from lightning_tricks.utilities.state_keys import StatefulCallback


@dataclass
class RangeTestResult:
    """The curve of a range test and what each rule suggests. ``lrs`` are the first param group's LRs."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    rule: str
    suggestion: float
    suggestions: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    #: how far the smoothed loss fell below its start, as a fraction (see ``relative_descent``)
    descent: float = math.nan
    #: False when the curve never fell clearly (``descent < min_descent``): the suggestion is not to be used
    clear_descent: bool = True

    def plot(self) -> Figure:
        """Loss against LR (log axis), raw and smoothed, every rule's suggestion marked; the chosen one solid."""
        # A fixed layout and a sparse log axis: constrained layout and minor log ticks triple the drawing time.
        figure = Figure(figsize=(6.0, 4.0), dpi=100)
        FigureCanvasAgg(figure)
        figure.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)
        ax = figure.subplots()
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", label="smoothed")
        for k, (name, lr) in enumerate(sorted(self.suggestions.items())):
            chosen = name == self.rule
            ax.axvline(
                lr,
                color=f"C{k + 1}",
                linestyle="-" if chosen else "--",
                linewidth=2 if chosen else 1,
                label=f"{name}: {lr:.2e}" + (" (chosen)" if chosen else ""),
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(numticks=9))
        ax.xaxis.set_minor_locator(NullLocator())
        finite = [v for v in self.smoothed if math.isfinite(v)]
        if finite:  # the explosion at the end would squash the interesting part of the curve
            low, high = min(finite), finite[0]
            ax.set_ylim(low - 0.1 * abs(high - low) - 1e-12, high + 0.5 * abs(high - low) + 1e-12)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        title = "LR range test" + (" (stopped: loss diverged)" if self.stopped_early else "")
        ax.set_title(title + ("" if self.clear_descent else " (no clear descent: no suggestion)"))
        ax.legend(fontsize=8)
        return figure


def clone_optimizer(optimizer: torch.optim.Optimizer, schedulers: Iterable[Any] = ()) -> torch.optim.Optimizer:
    """A new optimizer of the same class over the same parameters, with the same per-group settings, no state.

    Each group starts at the LR the user configured (:func:`configured_lrs`), not where a scheduler
    moved it: the sweep keeps the groups' ratios, which a warmup from 0 would otherwise erase.
    """
    lrs = configured_lrs(optimizer, schedulers)
    groups = [
        {**{k: v for k, v in g.items() if k != "initial_lr"}, "params": list(g["params"]), "lr": lr}
        for g, lr in zip(optimizer.param_groups, lrs, strict=True)
    ]
    try:
        return type(optimizer)(groups, **optimizer.defaults)
    except TypeError:  # an optimizer whose `defaults` holds more than its constructor takes
        return type(optimizer)(groups)


def _batches(loader: Any) -> Iterator[Any]:
    """The loader's batches, starting over when it is exhausted (a short epoch must not end the sweep)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("LRRangeTest: the training loader yielded no batches.")


def lr_range_test(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int = 100,
    mode: str = "exponential",
    smoothing: float = 0.98,
    diverge_factor: float | None = 4.0,
    suggestion: str | SuggestionRule = "steepest",
    min_descent: float = 0.05,
    seed: int | None = 0,
    adapter: ModelAdapter | None = None,
    to_device: Callable[[Any], Any] | None = None,
    average: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> RangeTestResult:
    """Sweep the LR over ``num_steps`` training steps on ``model`` and return the curve and the suggestion.

    The model is trained in place and restored afterwards (weights, buffers, gradients, modes, RNG).
    ``optimizer``: an optimizer over ``model``'s parameters to copy (class, settings, param groups —
    never its state), a factory taking the parameters, or None for the model's ``configure_optimizers``.
    Param groups keep their LR ratios; the reported LRs are the first group's. ``average`` reduces a
    tensor across processes (mean); with it, gradients and losses are averaged every step (DDP).
    A curve whose smoothed loss never falls ``min_descent`` (a fraction) below its start has no
    descent to read: the result says so (``clear_descent=False``) and its suggestion is not to be used.

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(512, 3)
    >>> data = DataLoader(TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]])), batch_size=32, shuffle=True)
    >>> model = nn.Linear(3, 1)
    >>> result = lr_range_test(
    ...     model, data, torch.optim.SGD(model.parameters()), start_lr=1e-4, end_lr=10, num_steps=80,
    ...     adapter=ModelAdapter(loss_fn=nn.MSELoss()),
    ... )
    >>> 1e-2 < result.suggestion < 1, result.stopped_early  # plain SGD on this problem is stable below lr 1
    (True, True)
    """
    check_range_arguments(start_lr, end_lr, num_steps, mode, smoothing, diverge_factor, suggestion, min_descent)
    adapter = adapter or ModelAdapter()
    if to_device is None:
        device = next(model.parameters()).device
        to_device = lambda batch: move_data_to_device(batch, device)  # noqa: E731
    sweep = lr_sweep(start_lr, end_lr, num_steps, mode)
    lrs: list[float] = []
    losses: list[float] = []
    stopped = False
    with preserved(model, seed=seed):
        opt = _make_optimizer(model, optimizer)
        base = [float(g["lr"]) for g in opt.param_groups]
        ratios = [b / base[0] if base[0] > 0 else 1.0 for b in base]
        model.train()
        batches = _batches(loader)
        smoothed_average, best = 0.0, math.inf
        steps = _progress(num_steps) if progress else None
        try:
            for i, lr in enumerate(sweep):
                for group, ratio in zip(opt.param_groups, ratios, strict=True):
                    group["lr"] = float(lr) * ratio
                loss = adapter.batch_loss(model, to_device(next(batches)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if average is not None:
                    _average_gradients(model, average)
                opt.step()
                value = loss.detach().float()
                value = float(average(value) if average is not None else value)
                lrs.append(float(lr))
                losses.append(value)
                smoothed_average = smoothing * smoothed_average + (1 - smoothing) * value
                current = smoothed_average / (1 - smoothing ** (i + 1))
                if steps is not None:
                    steps[0].update(steps[1], advance=1, description=f"LR range test  lr {lr:.1e}  loss {current:.4g}")
                if diverge_factor is not None and i > 0 and has_diverged(current, best, diverge_factor):
                    stopped = True
                    break
                best = min(best, current)
        finally:
            if steps is not None:
                steps[0].stop()
            opt.zero_grad(set_to_none=True)
    smoothed = smooth_centered(losses)
    lrs_array = np.asarray(lrs)
    suggestions = {name: suggest(lrs_array, smoothed, rule) for name, rule in SUGGESTION_RULES.items()}
    name = rule_name(suggestion)
    if name not in suggestions:
        suggestions[name] = suggest(lrs_array, smoothed, suggestion)
    return RangeTestResult(
        lrs=lrs,
        losses=losses,
        smoothed=smoothed.tolist(),
        rule=name,
        suggestion=suggestions[name],
        suggestions=suggestions,
        stopped_early=stopped,
        descent=relative_descent(smoothed),
        clear_descent=relative_descent(smoothed) >= min_descent,
    )


def check_range_arguments(
    start_lr: Any,
    end_lr: Any,
    num_steps: Any,
    mode: Any,
    smoothing: Any,
    diverge_factor: Any,
    suggestion: Any,
    min_descent: Any = 0.05,
) -> None:
    """Every argument of the sweep, checked before anything runs."""
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        check_float(value, name, "a finite number >= 0", lambda v: v >= 0, owner="LRRangeTest")
    if not end_lr > start_lr:
        raise ValueError(f"LRRangeTest: `end_lr` ({end_lr!r}) must be larger than `start_lr` ({start_lr!r}).")
    if mode not in MODES:
        raise ValueError(f"LRRangeTest: `mode` must be one of {MODES}, got {mode!r}.")
    if mode == "exponential" and start_lr <= 0:
        raise ValueError(f"LRRangeTest: an exponential sweep needs `start_lr` > 0, got {start_lr!r}.")
    check_int(num_steps, "num_steps", minimum=2, owner="LRRangeTest")
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise ValueError(f"LRRangeTest: `smoothing` must be a number in [0, 1), got {smoothing!r}.")
    if diverge_factor is not None and (
        isinstance(diverge_factor, bool) or not isinstance(diverge_factor, (int, float)) or diverge_factor <= 1
    ):
        raise ValueError(f"LRRangeTest: `diverge_factor` must be None or a number > 1, got {diverge_factor!r}.")
    resolve_rule(suggestion)
    check_float(min_descent, "min_descent", "a fraction in [0, 1)", lambda v: 0 <= v < 1, owner="LRRangeTest")


def no_descent_advice(result: RangeTestResult, min_descent: float) -> str:
    """What to do when the curve never fell clearly: the evidence, then how to get a curve that does."""
    return (
        f"the loss never fell clearly between lr {result.lrs[0]:.1e} and {result.lrs[-1]:.1e} (at most "
        f"{result.descent:.1%} below its start; a usable curve falls by {min_descent:.0%} or more), so no LR is "
        f"suggested. Widen the range (end_lr above {result.lrs[-1]:.1e}, start_lr below {result.lrs[0]:.1e}), sweep "
        f"more steps (num_steps > {len(result.lrs)}: each LR then gets more batches), or use a larger batch for a "
        "less noisy curve; if it still does not fall, run the preflight checks (the model may not learn at all)."
    )


def _make_optimizer(model: nn.Module, optimizer: Any) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        owned = {id(p) for p in model.parameters()}
        if not all(id(p) in owned for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("LRRangeTest: `optimizer` holds parameters that are not the model's.")
        return clone_optimizer(optimizer)
    if optimizer is not None:
        return optimizer(model.parameters())
    configure = getattr(model, "configure_optimizers", None)
    if configure is None:
        raise ValueError("LRRangeTest: pass `optimizer=` (an optimizer or a factory taking the parameters).")
    configured = configure()
    return clone_optimizer(first_optimizer(configured), schedulers_in(configured))


def _average_gradients(model: nn.Module, average: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Average every gradient across processes in one collective, as DDP would."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = average(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _progress(total: int) -> tuple[Any, Any]:
    from rich.progress import Progress

    progress = Progress(transient=True)
    task = progress.add_task("LR range test", total=total)
    progress.start()
    return progress, task


def set_learning_rate(trainer: pl.Trainer, lr: float) -> list[list[float]]:
    """Make ``lr`` the LR the run is configured with: the first param group's peak, whatever the scheduler.

    The suggestion takes the place of the LR the user configured, as the checks read it
    (:func:`~lightning_tricks.utilities.isolation.configured_lrs`):

    * ``OneCycleLR``: its ``max_lr`` (the cycle then starts at ``lr / div_factor``, as configured);
    * ``CyclicLR`` and ``schedules.Cyclical``: the upper bound ``max_lr`` (the lower bound keeps its ratio);
    * any other scheduler (step, exponential, cosine, warmups, ``schedules.*``) and no scheduler: the
      base LR the optimizer was built with, from which a decay falls and to which a warmup rises.

    Smith's rule for cyclical schedules (and fastai's ``fit_one_cycle(lr_max=...)``) puts the peak at
    the range test's LR: the sweep measured where a *constant* LR still trains, so no point of the
    schedule should go above it. Scaling from the schedule's start instead would put OneCycle's peak
    at ``div_factor`` (25) times the suggestion. Everything else follows as one scaling of the run's
    LRs by ``lr / peak``: other groups keep their ratio, and the schedulers' base and peak LRs move
    with it. Returns the new LRs.
    """
    schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
    peak = configured_lrs(trainer.optimizers[0], schedulers)[0]
    return scale_trainer_lr(trainer, lr / peak if peak > 0 else 1.0)


class LRRangeTest(StatefulCallback):
    """Run an LR range test at the start of a fresh fit; log the curve and suggestion; optionally use it.

    The sweep (``start_lr`` → ``end_lr`` over ``num_steps`` steps, exponential or linear) trains the
    module with a fresh copy of the run's first optimizer on the training data, then restores
    everything: the run continues exactly as it would have without the test. Under DDP each rank
    reads its own (seeded, disjoint) share of the training set and gradients and losses are averaged,
    so all ranks see one curve and one suggestion. It runs once per run: a resumed run keeps the
    result from its checkpoint and never sweeps again.

    Args:
        start_lr, end_lr, num_steps, mode: the sweep.
        smoothing: the factor of the debiased EMA that watches the loss for divergence while sweeping
            (the rules read a centred average of the finished curve, which does not lag).
        diverge_factor: stop once the smoothed loss exceeds this multiple of the best (None: never).
        suggestion: rule name (``"steepest"`` in log LR, ``"valley"``, ``"minimum"`` / 10) or a function
            ``(lrs, smoothed) -> index``; every built-in rule is computed and plotted anyway.
        min_descent: the fraction the smoothed loss must fall below its start for the curve to be read;
            a curve that never falls that far gets a warning instead of a suggestion, and nothing is applied.
        apply: make the suggestion the run's configured LR: the peak of a cyclical schedule (``max_lr`` of
            ``OneCycleLR``, ``CyclicLR``, ``schedules.Cyclical``), else the base LR a schedule starts or
            decays from (see :func:`set_learning_rate`); param-group ratios and schedulers follow.
        seed: seeds the sweep (data order, dropout), isolated from the run's RNG.
        split_batch, loss_fn: overrides of the model protocol.

    After it ran, ``result`` is a :class:`RangeTestResult` (``result.suggestion``).
    """

    def __init__(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 1.0,
        num_steps: int = 100,
        mode: str = "exponential",
        smoothing: float = 0.98,
        diverge_factor: float | None = 4.0,
        suggestion: str | SuggestionRule = "steepest",
        apply: bool = False,
        min_descent: float = 0.05,
        seed: int | None = 0,
        split_batch: Any = None,
        loss_fn: Any = None,
    ) -> None:
        check_range_arguments(start_lr, end_lr, num_steps, mode, smoothing, diverge_factor, suggestion, min_descent)
        if not isinstance(apply, bool):
            raise ValueError(f"LRRangeTest: `apply` must be True or False, got {apply!r}.")
        self.sweep = {
            "start_lr": start_lr,
            "end_lr": end_lr,
            "num_steps": num_steps,
            "mode": mode,
            "smoothing": smoothing,
            "diverge_factor": diverge_factor,
            "suggestion": suggestion,
            "min_descent": min_descent,
            "seed": seed,
        }
        self.apply = apply
        self.adapter = ModelAdapter(split_batch=split_batch, loss_fn=loss_fn)
        self.result: RangeTestResult | None = None
        self.applied_lr: float | None = None
        self._pending = False

    @property
    def sets_lr(self) -> bool:
        """True when this callback sets the run's LR (``apply=True``): LRBatchScaling then does not scale it."""
        return bool(self.apply)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._pending = True

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_train_start: after a checkpoint's training state (optimizers, loops) has been restored and
        # after every on_fit_start initialiser (e.g. LastLayerBiasInit), so the sweep sees the real start.
        if not self._pending:
            return
        self._pending = False
        if self.result is not None or trainer.ckpt_path is not None:
            rank_zero_info("LRRangeTest: resumed run, the range test is not run again.")
            return
        if not trainer.optimizers:
            raise ValueError("LRRangeTest: the run has no optimizer to test.")
        loader, partitioned = shard(
            train_loader(trainer, pl_module), trainer.global_rank, trainer.world_size, shuffle_seed=self.sweep["seed"]
        )
        if trainer.world_size > 1 and not partitioned:
            rank_zero_warn("LRRangeTest: an iterable training set cannot be split by rank; every rank reads all of it.")
        average = (lambda t: trainer.strategy.reduce(t, reduce_op="mean")) if trainer.world_size > 1 else None
        with run_precision(trainer):
            self.result = lr_range_test(
                pl_module,
                loader,
                trainer.optimizers[0],
                adapter=self.adapter,
                to_device=lambda b: to_model(trainer, b),
                average=average,
                progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
                **self.sweep,
            )
        if self.apply and self.result.clear_descent:
            set_learning_rate(trainer, self.result.suggestion)
            self.applied_lr = self.result.suggestion
        self._report(trainer)

    def _report(self, trainer: pl.Trainer) -> None:
        result = self.result
        assert result is not None
        if not result.clear_descent:
            applied = " Nothing applied: the run keeps its configured LR." if self.apply else ""
            rank_zero_warn(f"LRRangeTest: {no_descent_advice(result, self.sweep['min_descent'])}{applied}")
        others = ", ".join(f"{k} {v:.2e}" for k, v in sorted(result.suggestions.items()) if k != result.rule)
        rank_zero_info(
            f"LRRangeTest: suggested lr {result.suggestion:.3e} ({result.rule}; {others}) from {len(result.lrs)} "
            f"steps{' (stopped: the loss diverged)' if result.stopped_early else ''}"
            + (
                "; not used: the curve has no clear descent."
                if not result.clear_descent
                else "; applied to the run."
                if self.apply
                else "; not applied (apply=False)."
            )
        )
        values = {"tricks/lr_range_test/descent": result.descent}
        if result.clear_descent:
            values["tricks/lr_range_test/suggestion"] = result.suggestion
        values.update({f"tricks/lr_range_test/{k}": v for k, v in result.suggestions.items()})
        if self.applied_lr is not None:
            values["tricks/lr_range_test/applied_lr"] = self.applied_lr
        log_scalars(trainer, values)
        log_image(trainer, "tricks/lr_range_test/curve", result.plot())
        log_table(
            trainer,
            "tricks/lr_range_test/table",
            ["lr", "loss", "smoothed"],
            list(zip(result.lrs, result.losses, result.smoothed, strict=True)),
        )

    @property
    @override
    def state_key(self) -> str:
        sweep = {k: self.sweep[k] for k in ("start_lr", "end_lr", "num_steps", "mode", "seed")}
        # A custom rule is keyed by its name, as the result names it: a function's repr holds an address.
        return self._generate_state_key(**sweep, suggestion=rule_name(self.sweep["suggestion"]), apply=self.apply)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"result": asdict(self.result) if self.result is not None else None, "applied_lr": self.applied_lr}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        result = state_dict.get("result")
        self.result = RangeTestResult(**result) if result is not None else None
        self.applied_lr = state_dict.get("applied_lr")
