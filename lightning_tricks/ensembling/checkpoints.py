"""Checkpoint ensembles (recipe 6): load checkpoints safely, evaluate each member and their average.

Shared by the :class:`~lightning_tricks.callbacks.CheckpointEnsemble` callback and the
``lightning-tricks ensemble`` command. A member is a copy of a *template* model (the run's
``LightningModule``, or the one the command builds from the config) holding one checkpoint's weights:

* checkpoints are read with ``torch.load(weights_only=True)``, which refuses pickled objects other
  than tensors and plain containers, so a checkpoint cannot run code when it is loaded;
* the weights must fit the template exactly (``load_state_dict(strict=True)``): members share one
  architecture, and a checkpoint of another one is refused with the keys or shapes that differ;
* each checkpoint is loaded on its own: a missing, corrupted or mismatched file becomes a
  :class:`MemberFailure` naming the file and the reason, and the others are still evaluated.

The evaluation streams: every batch goes through all members, and only float64 sums are kept
(:func:`~lightning_tricks.functional.ensemble.batch_sums`), so memory does not grow with the data
set and shards of it (one per DDP rank) add up to the exact result.
"""

from __future__ import annotations

import copy
import glob
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn

from lightning_tricks.functional.ensemble import (
    batch_sums,
    higher_is_better,
    member_predictions,
    metric_name,
    metrics_from_sums,
)
from lightning_tricks.utilities.arguments import UsageError
from lightning_tricks.utilities.isolation import evaluating
from lightning_tricks.utilities.protocol import split_batch as default_split

_GLOB_CHARS = set("*?[")


class CheckpointError(UsageError):
    """A checkpoint could not be used as an ensemble member; the message names the file and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"checkpoint {self.path}: {reason}")


@dataclass(frozen=True)
class MemberFailure:
    path: str
    reason: str


@dataclass(frozen=True)
class MemberResult:
    path: str
    loss: float
    metric: float


@dataclass
class EnsembleReport:
    """Each member's and the ensemble's loss (NLL; MSE for regression) and metric (accuracy; MAE) on one split."""

    task: str
    metric_name: str
    count: int
    ensemble_loss: float
    ensemble_metric: float
    members: list[MemberResult]
    failures: list[MemberFailure] = field(default_factory=list)

    @classmethod
    def from_sums(
        cls, sums: torch.Tensor, paths: Sequence[str], task: str, failures: Sequence[MemberFailure] = ()
    ) -> EnsembleReport:
        """From summed :func:`~lightning_tricks.functional.ensemble.batch_sums` (members' rows, then the ensemble's)."""
        loss, metric, count = metrics_from_sums(sums)
        members = [MemberResult(str(p), float(loss[i]), float(metric[i])) for i, p in enumerate(paths)]
        return cls(task, metric_name(task), count, float(loss[-1]), float(metric[-1]), members, list(failures))

    @property
    def best_member(self) -> MemberResult:
        """The member with the best metric (ties: the lower loss)."""
        sign = -1.0 if higher_is_better(self.task) else 1.0
        return min(self.members, key=lambda m: (sign * m.metric, m.loss))

    @property
    def metric_gain(self) -> float:
        """How much better the ensemble's metric is than the best member's (positive: the ensemble wins)."""
        diff = self.ensemble_metric - self.best_member.metric
        return diff if higher_is_better(self.task) else -diff

    @property
    def loss_gain(self) -> float:
        """The lowest member loss minus the ensemble's loss (positive: the ensemble wins)."""
        return min(m.loss for m in self.members) - self.ensemble_loss

    def scalars(self, prefix: str = "test/ensemble") -> dict[str, float]:
        """The numbers to log: ``<prefix>_loss``, ``<prefix>_acc``, the best member's, the gain, the size."""
        name, best = self.metric_name, self.best_member
        return {
            f"{prefix}_loss": self.ensemble_loss,
            f"{prefix}_{name}": self.ensemble_metric,
            f"{prefix}_best_member_loss": best.loss,
            f"{prefix}_best_member_{name}": best.metric,
            f"{prefix}_gain_{name}": self.metric_gain,
            f"{prefix}_members": float(len(self.members)),
        }

    def rows(self) -> list[list[Any]]:
        """One row per member (failed ones too), then the ensemble: name, status, loss, metric."""
        rows: list[list[Any]] = [[m.path, "ok", m.loss, m.metric] for m in self.members]
        rows += [[f.path, f"failed: {f.reason}", None, None] for f in self.failures]
        rows.append([f"ensemble of {len(self.members)}", "ok", self.ensemble_loss, self.ensemble_metric])
        return rows

    @property
    def columns(self) -> list[str]:
        return ["member", "status", "loss", self.metric_name]

    def to_dict(self) -> dict[str, Any]:
        best = self.best_member
        return {
            **asdict(self),
            "best_member": asdict(best),
            "metric_gain": self.metric_gain,
            "loss_gain": self.loss_gain,
        }


def expand_checkpoints(checkpoints: str | Path | Iterable[str | Path] | None) -> list[str]:
    """Paths from a path, a glob (``runs/*/checkpoints/best*.ckpt``) or a list of both; sorted per glob, no repeats.

    A glob that matches nothing and an empty list are errors; a plain path that does not exist is
    kept (it fails as a member, with the others still evaluated).
    """
    if checkpoints is None or isinstance(checkpoints, (str, Path)):
        entries = [] if checkpoints is None else [checkpoints]
    else:
        entries = list(checkpoints)
    if not entries:
        raise UsageError("`checkpoints` is empty: give checkpoint paths or globs, e.g. 'outputs/*/checkpoints/*.ckpt'.")
    paths: list[str] = []
    for entry in entries:
        if not isinstance(entry, (str, Path)) or not str(entry):
            raise UsageError(f"`checkpoints` entries must be paths or globs, got {entry!r}.")
        entry = str(entry)
        if _GLOB_CHARS & set(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                raise UsageError(f"`checkpoints`: the glob {entry!r} matches no file.")
            paths += matches
        else:
            paths.append(entry)
    return list(dict.fromkeys(paths))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint, read with ``torch.load(weights_only=True)`` onto the CPU.

    Accepts a Lightning checkpoint (its ``state_dict``) or a plain ``torch.save(model.state_dict())``.
    Raises :class:`CheckpointError` naming the file for a missing, corrupted or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        unsafe = next((m.group(0) for line in lines if (m := re.search(r"GLOBAL \S+", line))), None)
        if unsafe is None:  # not a pickle weights_only refused, but bytes that are no pickle at all
            raise CheckpointError(path, f"cannot be read, corrupted or not a checkpoint? ({lines[:1]})") from err
        # weights_only refuses globals it does not allow: the file holds arbitrary pickled objects.
        raise CheckpointError(
            path,
            f"refused by torch.load(weights_only=True): it holds pickled objects other than tensors and plain "
            f"containers (unsupported {unsafe}). Load it with weights_only=False only if you trust its source.",
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            path, f"cannot be read, corrupted or truncated? ({type(err).__name__}: {reason})"
        ) from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            path, "holds no model weights (expected a Lightning checkpoint with a `state_dict`, or a state dict)"
        )
    return state


def load_member(path: str | Path, template: nn.Module) -> nn.Module:
    """A copy of ``template`` (in eval mode, no grad) with the checkpoint's weights; ``template`` is untouched."""
    state = load_state_dict(path)
    member = copy.deepcopy(template)  # a LightningModule's copy drops its Trainer (LightningModule.__getstate__)
    try:
        member.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(
            path, f"does not fit the model {type(template).__name__} (another architecture?): {detail}"
        ) from err
    member.eval()
    member.requires_grad_(False)
    return member


def load_members(
    paths: Sequence[str | Path], template: nn.Module
) -> tuple[list[tuple[str, nn.Module]], list[MemberFailure]]:
    """Load each checkpoint independently: ``[(path, member)]`` for those that load, a failure for each other."""
    members, failures = [], []
    for path in paths:
        try:
            members.append((str(path), load_member(path, template)))
        except CheckpointError as err:
            failures.append(MemberFailure(err.path, err.reason))
    return members, failures


def ensemble_sums(
    members: Sequence[nn.Module],
    loader: Iterable[Any],
    task: str,
    split_batch: Callable[[Any], tuple[Any, Any]] | None = None,
    to_device: Callable[[Any], Any] | None = None,
    split_module: nn.Module | None = None,
) -> torch.Tensor:
    """Summed ``(M + 1, 3)`` loss/metric/count of every member and the ensemble over ``loader`` (streamed).

    ``split_batch`` (else ``split_module.split_batch``, else the batch convention) gives
    ``(inputs, targets)``; ``to_device`` moves a batch where the members are.
    """
    if not members:
        raise ValueError("ensemble_sums: no members to evaluate.")
    totals = torch.zeros(len(members) + 1, 3, dtype=torch.float64)
    with evaluating(members[0]):  # no grad, isolated RNG; members are already in eval mode
        for batch in loader:
            if to_device is not None:
                batch = to_device(batch)
            inputs, targets = default_split(batch, split_module, split_batch)
            preds = torch.stack([member_predictions(member(inputs), task) for member in members])
            totals += batch_sums(preds.cpu(), targets.detach().cpu(), task)
    return totals


def evaluate_checkpoints(
    paths: Sequence[str | Path],
    template: nn.Module,
    loader: Iterable[Any],
    task: str,
    split_batch: Callable[[Any], tuple[Any, Any]] | None = None,
    device: torch.device | str | None = None,
) -> EnsembleReport:
    """Load the checkpoints as members of ``template``'s kind and score them and their ensemble (one process).

    Raises :class:`CheckpointError` (listing every failure) when no checkpoint loads.
    """
    members, failures = load_members(paths, template)
    if not members:
        raise CheckpointError(", ".join(map(str, paths)), no_member_message(failures))
    device = torch.device(device) if device is not None else next(template.parameters()).device
    modules = [m.to(device) for _, m in members]

    def to_device(batch: Any) -> Any:
        return move_data_to_device(batch, device)

    sums = ensemble_sums(modules, loader, task, split_batch, to_device, split_module=template)
    return EnsembleReport.from_sums(sums, [p for p, _ in members], task, failures)


def no_member_message(failures: Sequence[MemberFailure]) -> str:
    lines = "; ".join(f"{f.path}: {f.reason}" for f in failures)
    return f"no checkpoint could be loaded as an ensemble member ({lines})"
