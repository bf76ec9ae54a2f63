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


def bias_matches_targets(
    task: str, targets: torch.Tensor, bias: torch.Tensor, atol: float = 0.1, z: float = 4.0
) -> bool:
    """Whether the output bias was set from these targets' statistics (recipe 2.5).

    Compares the constant prediction of the bias with the targets: softmax(bias) with the class
    frequencies, sigmoid(bias) with the positive rates, bias with the mean. Only such a bias makes
    its prior-loss the expected one; any other bias is judged against the zero-bias expectation
    (``ln C``, ``ln 2``, the mean square).

    ``targets`` are a sample (the check's few batches) while the bias was set from the whole
    training set, so the sample's statistics differ from the bias by sampling error alone. The
    tolerance is ``atol`` (in target standard deviations for regression, in probability otherwise)
    plus ``z`` standard errors of the sample's statistic: without the second term, a bias set to the
    mean of 1,400 targets is judged "not from the data" on 7% of 256-sample draws (std 5, mean 50),
    and the check then expects the mean square (2,500) and reports target leakage.

    >>> p = torch.tensor([0.75, 0.25])
    >>> labels = torch.tensor([0, 0, 0, 1] * 100)
    >>> bias_matches_targets("multiclass", labels, p.log()), bias_matches_targets("multiclass", labels, 100 * p.log())
    (True, False)
    >>> y = 50 + 5 * torch.randn(256, 1, generator=torch.Generator().manual_seed(0))
    >>> [bias_matches_targets("regression", y, torch.tensor([b])) for b in (50.0, 0.0)]
    [True, False]
    """
    targets, b = targets.detach().cpu(), bias.detach().cpu().double().flatten()
    n = max(int(targets.shape[0]) if targets.ndim else 1, 1)
    if task == "multiclass":
        n = max(targets.numel(), 1)  # every position of a token or pixel target is one draw of the prior
        priors = torch.bincount(targets.long().flatten(), minlength=b.numel()).double() / n
        if priors.numel() != b.numel():
            return False
        tolerance = atol + z * (priors * (1 - priors) / n).sqrt()
        return bool(((torch.softmax(b, 0) - priors).abs() <= tolerance).all())
    y = targets.double().reshape(targets.shape[0], -1)
    if task in ("binary", "multilabel"):
        p = y.mean(0)
        tolerance = atol + z * (p * (1 - p) / n).sqrt()
        return bool(((torch.sigmoid(b).expand(y.shape[1]) - p).abs() <= tolerance).all())
    if task == "regression":
        scale = y.std(0, unbiased=False).clamp_min(1e-12)
        return bool(((b.expand(y.shape[1]) - y.mean(0)).abs() / scale <= atol + z / math.sqrt(n)).all())
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
