"""Recipe 1: sort the data by loss — per-sample losses, predictions and the ranking that finds label errors.

A sample whose label is wrong gets a high loss once the model has learnt the clean majority: the
model's confident prediction disagrees with the label. Sorting the training set by loss therefore
puts likely label errors (and hard or odd samples) first. These functions compute, per sample and
for each task, what that view needs; they take raw model outputs (logits, or values for
regression), never probabilities.

>>> import torch
>>> logits, labels = torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0])
>>> per_sample_loss("multiclass", logits, labels)
tensor([0.1269, 3.0486])
>>> rank_by_loss(per_sample_loss("multiclass", logits, labels), k=1)
tensor([1])
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from lightning_tricks.utilities.arguments import check_task


def _binary_logits(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # One logit per sample whatever the shapes: (N,), (N, 1) outputs against (N,) or (N, 1) targets.
    return outputs.float().reshape(len(outputs)), targets.float().reshape(len(targets))


def correct_predictions(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
    """Number of right predictions in a batch (None for regression): argmax; logit > 0; all labels right.

    Multiclass outputs carry the classes on dim 1, as ``F.cross_entropy`` wants: ``(N, C)``, or
    ``(N, C, H, W)`` against ``(N, H, W)`` targets (segmentation), where each sample counts the share
    of its pixels that are right, so the mean over samples is the pixel accuracy.

    >>> logits = torch.tensor([[[2.0, 2.0], [0.0, 0.0]]])  # (N=1, C=2, L=2): class 0 at both positions
    >>> correct_predictions("multiclass", logits, torch.tensor([[0, 1]]))
    0.5
    """
    if task == "multiclass":
        right = (outputs.argmax(1) == targets).float()
        if right.ndim == 1:
            return int(right.sum())
        return float(right.reshape(len(right), -1).mean(-1).sum())
    if task == "binary":
        return int(((outputs.reshape(targets.shape) > 0) == (targets > 0.5)).sum())
    if task == "multilabel":
        return int(((outputs > 0) == (targets > 0.5)).all(-1).sum())
    return None


def per_sample_loss(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of each sample, shape ``(N,)``: the terms whose batch mean is the usual training loss.

    multiclass: cross-entropy of the logits; binary: BCE with logits; multilabel: BCE averaged over
    the labels of a sample; regression: squared error averaged over the outputs of a sample.

    >>> per_sample_loss("binary", torch.tensor([[0.0], [0.0]]), torch.tensor([1.0, 0.0]))
    tensor([0.6931, 0.6931])
    >>> per_sample_loss("regression", torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]))
    tensor([1., 4.])
    """
    check_task(task)
    if task == "multiclass":  # (N, C) logits, or (N, C, ...) against (N, ...) targets: averaged per sample
        terms = F.cross_entropy(outputs.float(), targets.long(), reduction="none")
        return terms if terms.ndim == 1 else terms.reshape(len(terms), -1).mean(-1)
    if task == "binary":
        return F.binary_cross_entropy_with_logits(*_binary_logits(outputs, targets), reduction="none")
    n = len(outputs)
    if task == "multilabel":
        terms = F.binary_cross_entropy_with_logits(
            outputs.float(), targets.float().reshape(outputs.shape), reduction="none"
        )
        return terms.reshape(n, -1).mean(-1)
    return (outputs.float().reshape(n, -1) - targets.float().reshape(n, -1)).pow(2).mean(-1)


def predicted_label(task: str, outputs: torch.Tensor) -> torch.Tensor:
    """What the model predicts: the class (multiclass), 0/1 (binary), a 0/1 row (multilabel), the value (regression).

    >>> predicted_label("multiclass", torch.tensor([[0.1, 2.0, -1.0]]))
    tensor([1])
    """
    check_task(task)
    if task == "multiclass":
        return outputs.argmax(1)
    if task == "binary":
        return (outputs.reshape(len(outputs)) > 0).long()
    if task == "multilabel":
        return (outputs > 0).long()
    return outputs.float()


def predicted_probability(task: str, outputs: torch.Tensor) -> torch.Tensor | None:
    """The model's probability of its own prediction, ``(N,)``; None for regression.

    For multilabel, the mean over labels of the probability of the predicted value.

    >>> predicted_probability("binary", torch.tensor([0.0, -20.0]))
    tensor([0.5000, 1.0000])
    """
    check_task(task)
    if task == "multiclass":  # classes on dim 1; a dense prediction (N, C, H, W): the mean over its positions
        return torch.softmax(outputs.float(), 1).amax(1).reshape(len(outputs), -1).mean(-1)
    if task in ("binary", "multilabel"):
        p = torch.sigmoid(outputs.float().reshape(len(outputs), -1))
        return torch.maximum(p, 1 - p).mean(-1)
    return None


def probability_of_label(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """``p_given``: the probability the model gives to the *given* label, ``(N,)``; None for regression.

    Low for a sample the model thinks is mislabelled. It equals ``exp(-loss)`` for multiclass and
    binary; for multilabel it is the geometric mean over labels (``exp(-mean BCE)``), so it stays
    comparable across label counts.

    >>> probability_of_label("multiclass", torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
    tensor([0.5000])
    """
    check_task(task)
    if task == "regression":
        return None
    return torch.exp(-per_sample_loss(task, outputs, targets))


def margin(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Logit of the given label minus the largest other logit, ``(N,)``: negative means misclassified.

    Binary: the logit signed towards the label; multilabel: the smallest such value over labels (the
    worst label decides); a dense multiclass prediction (``(N, C, H, W)`` against ``(N, H, W)``, e.g.
    segmentation): the mean over its positions. None for regression.

    >>> margin("multiclass", torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]]), torch.tensor([0, 2]))
    tensor([ 2., -3.])
    >>> margin("multiclass", torch.tensor([[[[3.0, 0.0]], [[1.0, 2.0]]]]), torch.tensor([[[0, 1]]]))  # (1, 2, 1, 2)
    tensor([2.])
    >>> margin("binary", torch.tensor([2.0]), torch.tensor([0.0]))
    tensor([-2.])
    """
    check_task(task)
    if task == "regression":
        return None
    n = len(outputs)
    if task == "multiclass":
        # Classes on dim 1, moved last; a dense prediction ((N, C, H, W) against (N, H, W)): the mean over positions.
        logits = outputs.float().movedim(1, -1)
        index = targets.long().reshape(*logits.shape[:-1], 1)
        given = logits.gather(-1, index).squeeze(-1)
        others = logits.scatter(-1, index, float("-inf")).amax(-1)
        return (given - others).reshape(n, -1).mean(-1)
    signed = (2 * targets.float().reshape(n, -1) - 1) * outputs.float().reshape(n, -1)
    return signed.amin(-1)


def rank_by_loss(losses: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Positions of the ``k`` highest losses (all when None), highest first; ties keep the earlier position.

    NaN losses rank first: a sample the model cannot score is the first one to look at.

    >>> rank_by_loss(torch.tensor([0.5, 2.0, 0.5, float("nan")]))
    tensor([3, 1, 0, 2])
    """
    if losses.ndim != 1:
        raise ValueError(f"rank_by_loss: `losses` must be one-dimensional, got shape {tuple(losses.shape)}.")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ValueError(f"rank_by_loss: `k` must be None or an integer >= 0, got {k!r}.")
    keys = torch.nan_to_num(losses.double(), nan=float("inf"))
    order = torch.sort(keys, descending=True, stable=True).indices
    return order if k is None else order[:k]


def precision_at_k(ranked_indices: Iterable[int], flagged_indices: Iterable[int], k: int) -> float:
    """The fraction of the first ``k`` ranked samples that are flagged (e.g. known label errors).

    >>> precision_at_k([4, 2, 9, 7], flagged_indices={2, 7, 8}, k=2)
    0.5
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"precision_at_k: `k` must be an integer >= 1, got {k!r}.")
    top = [int(i) for i in ranked_indices][:k]
    if len(top) < k:
        raise ValueError(f"precision_at_k: {len(top)} ranked samples, fewer than k={k}.")
    flagged = {int(i) for i in flagged_indices}
    return sum(i in flagged for i in top) / k
