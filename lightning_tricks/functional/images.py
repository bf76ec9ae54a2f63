"""Turning tensors, arrays and matplotlib figures into ``uint8`` HxWxC images."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def to_uint8_image(image: Any) -> np.ndarray:
    """An ``(H, W, C)`` uint8 array from ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` data, C in {1, 3, 4}.

    Float data is min-max scaled to 0..255 (a constant image becomes 0), so
    normalised tensors are shown as they enter the network, only rescaled.

    >>> to_uint8_image(np.array([[0.0, 0.5], [1.0, 1.0]]))[..., 0].tolist()
    [[0, 128], [255, 255]]
    """
    arr = _as_numpy(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"`image` must be (H, W), (C, H, W) or (H, W, C) with C in 1, 3, 4; got {arr.shape}.")
    return _scale_to_uint8(arr)


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.round(np.nan_to_num(np.clip(scaled, 0, 1)) * 255).astype(np.uint8)


def make_grid(images: Any, ncols: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile ``(N, C, H, W)`` or ``(N, H, W)`` images into one uint8 grid, scaled together.

    Scaling the batch together (not image by image) keeps brightness comparable
    across samples, which is what one looks at when checking preprocessing.

    >>> make_grid(np.zeros((5, 1, 2, 3)), ncols=3).shape
    (5, 11, 1)
    """
    arr = _as_numpy(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise ValueError(f"`images` must be a non-empty (N, C, H, W) or (N, H, W) batch; got {arr.shape}.")
    n, c, h, w = arr.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    tiles = _scale_to_uint8(arr).transpose(0, 2, 3, 1)  # scaled together, then (N, H, W, C)
    grid = np.zeros((nrows * h + (nrows - 1) * padding, ncols * w + (ncols - 1) * padding, c), np.uint8)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, ncols)
        grid[r * (h + padding) : r * (h + padding) + h, col * (w + padding) : col * (w + padding) + w] = tile
    return grid


def figure_to_array(figure: Any) -> np.ndarray:
    """Render a matplotlib figure to an ``(H, W, 3)`` uint8 array."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
