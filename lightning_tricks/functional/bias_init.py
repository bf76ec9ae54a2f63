"""Recipe 2.5: initialise the output bias from the training targets, so the model starts at the prior.

Statistics are kept as sums and counts (:class:`TargetStats`), so shards of the data — batches,
ranks — combine exactly by adding them (an all-reduce sum), and the bias follows in closed form:

* multiclass softmax: ``b_c = log p_c`` (then softmax(b) = p);
* binary / multilabel sigmoid: ``b = log(p / (1 - p))`` per output (then sigmoid(b) = p);
* regression: ``b = mean(y)`` per output.

A class never seen (p = 0 or 1) gets a finite floor: half a sample's worth of probability.

>>> stats = TargetStats.from_targets("binary", torch.tensor([1.0] + [0.0] * 9), num_outputs=1)
>>> round(float(torch.sigmoid(bias_from_stats(stats))), 6)
0.1
>>> bias_from_stats(TargetStats.from_targets("regression", torch.tensor([[49.0], [51.0]]), num_outputs=1))
tensor([50.], dtype=torch.float64)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TargetStats", "bias_from_stats", "bias_from_targets"]


@dataclass
class TargetStats:
    """Additive statistics of targets: per-output sums (counts for classes), squared sums, sample count."""

    task: str
    sums: torch.Tensor
    squares: torch.Tensor
    count: torch.Tensor
    nan_count: torch.Tensor

    @classmethod
    def empty(cls, task: str, num_outputs: int) -> TargetStats:
        zeros = torch.zeros(num_outputs, dtype=torch.float64)
        return cls(
            task, zeros, zeros.clone(), torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        )

    @classmethod
    def from_targets(cls, task: str, targets: torch.Tensor, num_outputs: int) -> TargetStats:
        stats = cls.empty(task, num_outputs)
        stats.add(targets)
        return stats

    def add(self, targets: torch.Tensor) -> None:
        """Accumulate one batch of targets."""
        y = targets.detach().cpu()
        n = self.sums.numel()
        if self.task == "multiclass":
            labels = y.long().flatten()
            if labels.numel() and (labels.min() < 0 or labels.max() >= n):
                raise ValueError(
                    f"multiclass targets must be class indices in [0, {n - 1}] for an output layer of size {n}, "
                    f"got labels from {int(labels.min())} to {int(labels.max())}: the output layer's size does not "
                    f"match the number of classes."
                )
            self.sums += torch.bincount(labels, minlength=n).double()
            self.count += labels.numel()
            return
        y = y.double().reshape(y.shape[0], -1) if y.ndim else y.double().reshape(1, 1)
        if y.shape[1] != n:
            raise ValueError(
                f"{self.task} targets have {y.shape[1]} values per sample but the output layer has {n} outputs."
            )
        nan = torch.isnan(y)
        self.nan_count += nan.sum()
        y = torch.where(nan, torch.zeros_like(y), y)
        self.sums += y.sum(0)
        self.squares += (y * y).sum(0)
        self.count += y.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        """The tensors to all-reduce (sum) across ranks, in place."""
        return [self.sums, self.squares, self.count, self.nan_count]

    @property
    def mean(self) -> torch.Tensor:
        return self.sums / self.count.clamp_min(1)

    @property
    def variance(self) -> torch.Tensor:
        return (self.squares / self.count.clamp_min(1) - self.mean**2).clamp_min(0)


def bias_from_stats(stats: TargetStats) -> torch.Tensor:
    """The output bias whose constant prediction is the targets' prior (see the module docstring)."""
    if stats.count <= 0:
        raise ValueError("No training targets were seen: cannot set the output bias from the data.")
    if stats.task != "multiclass" and stats.nan_count > 0:
        raise ValueError(f"{int(stats.nan_count)} training targets are NaN: clean the targets before bias init.")
    floor = 0.5 / float(stats.count)
    if stats.task == "multiclass":
        p = (stats.sums / stats.count).clamp_min(floor)
        return torch.log(p) - torch.logsumexp(torch.log(p), 0)  # softmax(b) = p where p was observed
    if stats.task in ("binary", "multilabel"):
        p = stats.mean.clamp(floor, 1 - floor)
        return torch.log(p) - torch.log1p(-p)
    if stats.task == "regression":
        return stats.mean
    raise ValueError(f"`task` must be one of 'multiclass', 'binary', 'multilabel', 'regression', got {stats.task!r}.")


def bias_from_targets(task: str, targets: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """``bias_from_stats`` of one tensor of targets."""
    return bias_from_stats(TargetStats.from_targets(task, targets, num_outputs))
