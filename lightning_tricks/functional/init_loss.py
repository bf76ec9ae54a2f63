"""Recipe 2.4: the loss a correctly initialised model starts at, derived from the targets and the output bias.

At a good initialisation the output layer's weights contribute little and the prediction is set by
its bias: softmax(bias) for multiclass, sigmoid(bias) for binary/multilabel, bias for regression.
The expected initial loss is the loss of that constant prediction on the real targets:

* multiclass cross-entropy: ``-sum_c p_c log softmax(b)_c`` — ``ln C`` for a zero bias, the entropy
  of the class prior ``p`` when the bias is ``log p`` (recipe 2.5);
* binary cross-entropy: ``-[p log s + (1-p) log(1-s)]`` with ``s = sigmoid(b)`` per output, averaged —
  ``ln 2`` for a zero bias, the binary entropy of ``p`` when ``b = logit(p)``;
* mean squared error: ``Var(y) + (mean(y) - b)^2`` — the mean square of the targets for a zero bias,
  their variance when the bias is their mean.

>>> round(expected_init_loss("multiclass", torch.tensor([0, 1, 2, 3]), num_outputs=4), 6) == round(math.log(4), 6)
True
>>> round(expected_init_loss("binary", torch.tensor([0.0, 1.0])), 6) == round(math.log(2), 6)
True
>>> expected_init_loss("regression", torch.tensor([[1.0], [3.0]]))  # mean square, zero bias
5.0
"""

from __future__ import annotations

import math

import torch

__all__ = ["bias_matches_targets", "expected_init_loss", "likely_cause"]


def expected_init_loss(
    task: str,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    num_outputs: int | None = None,
) -> float:
    """Loss of the constant prediction implied by ``bias`` (zero when None) on ``targets``."""
    targets = targets.detach().cpu()
    if task == "multiclass":
        if num_outputs is None:
            num_outputs = bias.numel() if bias is not None else int(targets.max()) + 1
        b = torch.zeros(num_outputs) if bias is None else bias.detach().cpu().double().flatten()
        priors = torch.bincount(targets.long().flatten(), minlength=num_outputs).double() / targets.numel()
        return float(-(priors * torch.log_softmax(b.double(), 0)).sum())
    if task in ("binary", "multilabel"):
        y = targets.double().reshape(targets.shape[0], -1)
        p = y.mean(0)
        b = torch.zeros_like(p) if bias is None else bias.detach().cpu().double().flatten().expand_as(p)
        s_log, ns_log = torch.nn.functional.logsigmoid(b), torch.nn.functional.logsigmoid(-b)
        return float(-(p * s_log + (1 - p) * ns_log).mean())
    if task == "regression":
        y = targets.double().reshape(targets.shape[0], -1)
        b = torch.zeros(y.shape[1], dtype=torch.float64) if bias is None else bias.detach().cpu().double().flatten()
        return float((y.var(0, unbiased=False) + (y.mean(0) - b) ** 2).mean())
    raise ValueError(f"`task` must be one of 'multiclass', 'binary', 'multilabel', 'regression', got {task!r}.")


def bias_matches_targets(task: str, targets: torch.Tensor, bias: torch.Tensor, atol: float = 0.1) -> bool:
    """Whether the output bias was set from these targets' statistics (recipe 2.5), within ``atol``.

    Compares the constant prediction of the bias with the targets: softmax(bias) with the class
    frequencies, sigmoid(bias) with the positive rates, bias with the mean (``atol`` in target
    standard deviations). Only such a bias makes its prior-loss the expected one; any other bias is
    judged against the zero-bias expectation (``ln C``, ``ln 2``, the mean square).

    >>> p = torch.tensor([0.75, 0.25])
    >>> bias_matches_targets("multiclass", torch.tensor([0, 0, 0, 1]), p.log())
    True
    >>> bias_matches_targets("multiclass", torch.tensor([0, 0, 0, 1]), 100 * p.log())
    False
    """
    targets, b = targets.detach().cpu(), bias.detach().cpu().double().flatten()
    if task == "multiclass":
        priors = torch.bincount(targets.long().flatten(), minlength=b.numel()).double() / targets.numel()
        return priors.numel() == b.numel() and bool((torch.softmax(b, 0) - priors).abs().max() <= atol)
    y = targets.double().reshape(targets.shape[0], -1)
    if task in ("binary", "multilabel"):
        return bool((torch.sigmoid(b).expand(y.shape[1]) - y.mean(0)).abs().max() <= atol)
    if task == "regression":
        scale = y.std(0, unbiased=False).clamp_min(1e-12)
        return bool(((b.expand(y.shape[1]) - y.mean(0)).abs() / scale).max() <= atol)
    raise ValueError(f"`task` must be one of 'multiclass', 'binary', 'multilabel', 'regression', got {task!r}.")


def likely_cause(task: str, measured: float, expected: float) -> str:
    """A sentence on what usually makes the initial loss differ from its expected value."""
    if not math.isfinite(measured):
        return "The loss is not finite: look for NaN/Inf in the inputs or targets, or a log/division of zero."
    if measured > expected:
        if task == "multiclass":
            return (
                "The initial predictions are confidently wrong: the output layer's initial scale is too large "
                "(its weights or bias), or the inputs are not normalised."
            )
        return "The initial outputs are too large: shrink the output layer's init, normalise the inputs."
    if task == "multiclass":
        return (
            "The loss is lower than a calibrated guess can be: the targets may leak into the inputs, or the loss "
            "is not the mean cross-entropy (e.g. reduction='sum' divided wrongly, or label smoothing)."
        )
    return "The loss is lower than a constant prediction can reach: check for target leakage or loss scaling."
