"""Geometric views of signal and image batches: shifts, flips, small rotations.

Used twice: random per-sample views while training (data augmentation, recipe 4) and
a fixed list of views at test time (test-time augmentation, recipe 6). Borders are
filled by repeating the edge (``replicate``), not with zeros: the data modules
standardise inputs, so a zero would be the mean pixel, while the edge of a digit
image is its background.

Batches are ``(N, C, L)`` signals or ``(N, C, H, W)`` images; offsets and angles
act on the trailing (spatial) dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _spatial_dims(x: torch.Tensor) -> int:
    if x.ndim not in (3, 4):
        raise ValueError(f"Expected an (N, C, L) or (N, C, H, W) batch, got shape {tuple(x.shape)}.")
    return x.ndim - 2


def shift(x: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """Move the content by whole samples/pixels (``(dl,)`` or ``(dy, dx)``), repeating the edge.

    >>> shift(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]), (1,)).tolist()
    [[[1.0, 1.0, 2.0, 3.0]]]
    >>> shift(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]), (-2,)).tolist()
    [[[3.0, 4.0, 4.0, 4.0]]]

    ``(N, L)`` signals without a channel axis are shifted as ``(N, 1, L)``:

    >>> shift(torch.tensor([[1.0, 2.0, 3.0]]), (1,)).tolist()
    [[1.0, 1.0, 2.0]]
    """
    if x.ndim == 2:
        return shift(x[:, None], offsets)[:, 0]
    dims = _spatial_dims(x)
    offsets = [int(o) for o in offsets]
    if len(offsets) != dims:
        raise ValueError(f"`offsets` needs {dims} value(s) for a batch of shape {tuple(x.shape)}, got {offsets}.")
    if not any(offsets):
        return x
    sizes = x.shape[2:]
    if any(abs(o) >= s for o, s in zip(offsets, sizes, strict=True)):
        raise ValueError(f"`offsets` {offsets} must be smaller than the spatial size {tuple(sizes)}.")
    # F.pad lists (left, right) pairs from the last dimension backwards.
    pad: list[int] = []
    for o in reversed(offsets):
        pad += [max(o, 0), max(-o, 0)]
    padded = F.pad(x, pad, mode="replicate")
    index = tuple(slice(max(-o, 0), max(-o, 0) + s) for o, s in zip(offsets, sizes, strict=True))
    return padded[(..., *index)]


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror the last dimension (left-right for images, time-reversal for signals, ``(N, L)`` included)."""
    if x.ndim != 2:
        _spatial_dims(x)
    return x.flip(-1)


def rotate(x: torch.Tensor, degrees: float | torch.Tensor) -> torch.Tensor:
    """Rotate images about their centre (one angle, or one per sample), bilinear, edges repeated.

    >>> x = torch.arange(9.0).view(1, 1, 3, 3)
    >>> torch.equal(rotate(x, 0.0), x)
    True
    """
    if _spatial_dims(x) != 2:
        raise ValueError(f"`rotate` needs (N, C, H, W) images, got shape {tuple(x.shape)}.")
    angles = torch.as_tensor(degrees, dtype=x.dtype, device=x.device).expand(x.shape[0]) * (math.pi / 180)
    cos, sin = angles.cos(), angles.sin()
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], -1), torch.stack([sin, cos, zeros], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_shift_rotate(
    x: torch.Tensor,
    max_shift: int = 1,
    max_degrees: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Each sample shifted by a uniform whole offset in ``[-max_shift, max_shift]`` per spatial
    dimension and (images only) rotated by a uniform angle in ``[-max_degrees, max_degrees]``.

    Drawn from ``generator`` (or torch's global RNG, which Lightning seeds per worker).
    """
    dims = _spatial_dims(x)
    if max_shift < 0 or max_degrees < 0:
        raise ValueError(f"`max_shift` and `max_degrees` must be >= 0, got {max_shift} and {max_degrees}.")
    out = x
    if max_shift:
        draws = torch.randint(-max_shift, max_shift + 1, (x.shape[0], dims), generator=generator)
        # One shifted copy per distinct offset (at most (2s+1)^dims of them), not one per sample.
        out = x.clone()
        for offsets in draws.unique(dim=0):
            rows = (draws == offsets).all(1).nonzero().squeeze(1).to(x.device)
            out[rows] = shift(x[rows], offsets.tolist())
    if max_degrees and dims == 2:
        angles = (torch.rand(x.shape[0], generator=generator) * 2 - 1) * max_degrees
        out = rotate(out, angles.to(x.device))
    return out
