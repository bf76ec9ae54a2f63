"""Recipe 6, the math of an ensemble: average the members' predicted probabilities, score it from sums.

Each member's outputs become *log*-probabilities (``log_softmax`` for multiclass; ``log sigmoid`` of
the logit and of its negation for binary and multilabel, i.e. two classes per label); regression
outputs stay raw. The ensemble predicts the mean probability, computed in log space as
``logsumexp(log p_m) - log M`` so a confident member does not underflow, and the mean output for
regression. Scores are sums over samples (float64), so shards of a data set add up exactly:

* loss: the negative log-likelihood of the targets (cross entropy; binary cross entropy averaged
  over labels), or the squared error for regression — for a single member it equals the model's own
  ``CrossEntropyLoss`` / ``BCEWithLogitsLoss`` / ``MSELoss``;
* metric: right predictions (accuracy), or the absolute error (MAE) for regression.

>>> logits = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])  # two members, one sample, two classes
>>> preds = torch.stack([member_predictions(z, "multiclass") for z in logits])
>>> probabilities(ensemble_predictions(preds, "multiclass"), "multiclass")
tensor([[0.5000, 0.5000]])
>>> sums = batch_sums(preds, torch.tensor([0]), "multiclass")  # rows: member 0, member 1, ensemble
>>> loss, metric, count = metrics_from_sums(sums)
>>> [round(v, 4) for v in loss.tolist()], metric.tolist(), count
([0.1269, 2.1269, 0.6931], [1.0, 0.0, 1.0], 1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The same averaging and metric naming as test-time augmentation (an ensemble over views).
from lightning_tricks.functional.tta import log_mean_exp, metric_name
from lightning_tricks.utilities.arguments import check_task

__all__ = [
    "batch_sums",
    "ensemble_predictions",
    "higher_is_better",
    "member_predictions",
    "metric_name",
    "metrics_from_sums",
    "probabilities",
    "sample_losses",
    "sample_scores",
]


def higher_is_better(task: str) -> bool:
    """Whether a larger metric is better (accuracy) or worse (MAE)."""
    return metric_name(task) == "acc"


def member_predictions(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """What is averaged over members: log-probabilities (last dim: classes), or raw regression outputs.

    Shapes: multiclass ``(N, C)``; binary ``(N, 2)`` (log P(0), log P(1)); multilabel ``(N, L, 2)``.
    """
    task = check_task(task)
    outputs = outputs.detach().float()
    if task == "multiclass":
        return F.log_softmax(outputs, dim=-1)
    if task == "regression":
        return outputs
    logits = outputs.reshape(len(outputs)) if task == "binary" else outputs
    return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=-1)


def ensemble_predictions(member_preds: torch.Tensor, task: str) -> torch.Tensor:
    """The ensemble's prediction from ``member_predictions`` stacked on dim 0: the mean probability (or output)."""
    if check_task(task) == "regression":
        return member_preds.mean(0)
    return log_mean_exp(member_preds)


def probabilities(preds: torch.Tensor, task: str) -> torch.Tensor:
    """Probabilities from ``member_predictions``/``ensemble_predictions``: per class (multiclass), of the
    positive class (binary ``(N,)``, multilabel ``(N, L)``); regression outputs unchanged."""
    task = check_task(task)
    if task == "regression":
        return preds
    if task == "multiclass":
        return preds.exp()
    return preds[..., 1].exp()


def sample_losses(preds: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample loss ``(N,)``: NLL of the targets (class indices or per-class probabilities), squared error."""
    task = check_task(task)
    n = len(preds)
    if task == "multiclass":
        if targets.is_floating_point() and targets.shape == preds.shape:  # soft labels
            return -(targets * preds).sum(-1)
        return -preds.gather(-1, targets.long().reshape(n, 1)).reshape(n)
    if task == "regression":
        error = preds.reshape(targets.shape) - targets.float()
        return error.square().reshape(n, -1).mean(1)
    y = targets.float().reshape(preds.shape[:-1])
    nll = -(y * preds[..., 1] + (1 - y) * preds[..., 0])
    return nll.reshape(n, -1).mean(1)


def sample_scores(preds: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample metric ``(N,)``: 1.0 if right else 0.0 (all labels right for multilabel); absolute error."""
    task = check_task(task)
    n = len(preds)
    if task == "multiclass":
        if targets.is_floating_point() and targets.shape == preds.shape:
            targets = targets.argmax(-1)
        return (preds.argmax(-1) == targets.reshape(n)).double()
    if task == "regression":
        return (preds.reshape(targets.shape) - targets.float()).abs().reshape(n, -1).mean(1).double()
    positive = preds[..., 1] > preds[..., 0]
    right = positive == (targets.reshape(positive.shape) > 0.5)
    return right.reshape(n, -1).all(1).double()


def batch_sums(member_preds: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """``(M + 1, 3)`` float64 sums over a batch — rows: each member, then the ensemble; columns: loss, metric, count."""
    rows = [*member_preds, ensemble_predictions(member_preds, task)]
    sums = torch.zeros(len(rows), 3, dtype=torch.float64)
    for i, preds in enumerate(rows):
        sums[i, 0] = sample_losses(preds, targets, task).double().sum()
        sums[i, 1] = sample_scores(preds, targets, task).sum()
        sums[i, 2] = len(preds)
    return sums


def metrics_from_sums(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean loss and mean metric per row of (all batches' and ranks') summed ``batch_sums``, and the count."""
    count = int(sums[0, 2])
    if count == 0:
        raise ValueError("metrics_from_sums: no samples were evaluated (count 0).")
    return sums[:, 0] / sums[:, 2], sums[:, 1] / sums[:, 2], count
