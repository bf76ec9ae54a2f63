"""Recipe 2.12: use backprop to chart dependencies — output i must depend on input i only.

The naive check backpropagates one sample's output at a time: B backward passes. Here the whole
batch is checked with **one forward and two backward passes**, whatever B is. Each sample's output
is projected to a scalar ``s_i = <u, out_i>`` and weighted by a random ``w_i``; the gradient that
reaches input ``j`` is ``g_j = sum_i w_i ds_i/dx_j``. For a model that keeps samples apart only
``i = j`` contributes, so ``g_j / w_j`` is the same for any weights. Two independent weightings
therefore agree exactly on a clean model and disagree (almost surely) on input ``j`` as soon as any
other sample's output depends on it. Which outputs do is then found with one backward per suspect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["DependencyReport", "batch_dependency", "causal_violations"]


@dataclass
class DependencyReport:
    """Per-input contamination (0 on a clean model) and the offending (output i, input j) pairs found."""

    contamination: torch.Tensor
    input_gradient_norm: torch.Tensor
    pairs: list[tuple[int, int]] = field(default_factory=list)
    backward_passes: int = 0

    @property
    def mixed_inputs(self) -> list[int]:
        return [int(j) for j in torch.nonzero(self.contamination > 0).flatten()]


def _grad(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """d output / d inputs, zeros when the inputs do not reach the output at all (that is a finding, not an error)."""
    if not output.requires_grad:  # nothing with parameters or inputs produced it
        return torch.zeros_like(inputs)
    (grad,) = torch.autograd.grad(output, inputs, retain_graph=True, allow_unused=True, materialize_grads=True)
    return grad


def _scores(outputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flat = outputs.reshape(outputs.shape[0], -1)
    u = torch.randn(flat.shape[1], generator=generator, dtype=torch.float64).to(flat.device, flat.dtype)
    return flat @ u


def batch_dependency(
    outputs: torch.Tensor, inputs: torch.Tensor, rtol: float = 1e-3, max_explained: int = 4, seed: int = 0
) -> DependencyReport:
    """Check that ``outputs[i]`` depends on ``inputs[i]`` only; ``inputs`` is a leaf that requires grad.

    ``contamination[j]`` is the relative disagreement of the two weightings at input ``j`` (0 when
    clean, > ``rtol`` is reported). Up to ``max_explained`` suspect outputs are backpropagated alone to
    list the pairs ``(i, j)``, ``i != j``, where output ``i`` receives gradient from input ``j``.
    """
    generator = torch.Generator().manual_seed(seed)
    scores = _scores(outputs, generator)
    batch = scores.shape[0]
    shape = (batch,) + (1,) * (inputs.ndim - 1)
    # Weights in [1, 2): far from 0, so dividing by them is well conditioned.
    w1, w2 = (1 + torch.rand(batch, generator=generator, dtype=torch.float64) for _ in range(2))
    w1, w2 = (w.to(scores.device, scores.dtype) for w in (w1, w2))
    g1 = _grad((w1 * scores).sum(), inputs)
    g2 = _grad((w2 * scores).sum(), inputs)
    d1, d2 = (g / w.reshape(shape) for g, w in ((g1, w1), (g2, w2)))
    diff = (d1 - d2).reshape(batch, -1).double().norm(dim=1)
    scale = torch.maximum(d1.reshape(batch, -1).double().norm(dim=1), d2.reshape(batch, -1).double().norm(dim=1))
    largest = scale.max().clamp_min(torch.finfo(torch.float64).tiny)
    contamination = diff / torch.maximum(scale, largest * 1e-6)
    contamination = torch.where(contamination > rtol, contamination, torch.zeros_like(contamination))
    report = DependencyReport(contamination.cpu(), scale.cpu(), backward_passes=2)
    # Explain: backprop suspect outputs alone. Inputs that are mixed are usually read by other samples'
    # outputs of the same group, so start with those indices, then the rest.
    suspects = report.mixed_inputs + [i for i in range(batch) if i not in report.mixed_inputs]
    if report.mixed_inputs:
        for i in suspects[:max_explained]:
            g = _grad(scores[i], inputs)
            report.backward_passes += 1
            norms = g.reshape(batch, -1).double().norm(dim=1)
            for j in torch.nonzero(norms > rtol * norms.max().clamp_min(1e-300)).flatten().tolist():
                if j != i:
                    report.pairs.append((i, int(j)))
    return report


def causal_violations(
    outputs: torch.Tensor, inputs: torch.Tensor, positions: list[int], rtol: float = 1e-6, seed: int = 0
) -> list[tuple[int, int]]:
    """Pairs ``(t, s)``, ``s > t``, where the output at position ``t`` depends on the input at position ``s``.

    ``outputs`` and ``inputs`` are ``(B, T, ...)``; one backward per probed position ``t``.
    """
    generator = torch.Generator().manual_seed(seed)
    violations = []
    for t in positions:
        score = _scores(outputs[:, t], generator).sum()
        g = _grad(score, inputs)
        per_position = g.transpose(0, 1).reshape(g.shape[1], -1).double().norm(dim=1)
        threshold = rtol * per_position.max().clamp_min(1e-300)
        violations += [(t, s) for s in range(t + 1, per_position.shape[0]) if per_position[s] > threshold]
    return violations
