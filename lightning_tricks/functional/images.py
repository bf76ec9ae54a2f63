"""Turning tensors, arrays and matplotlib figures into ``uint8`` HxWxC images."""

from __future__ import annotations

from collections.abc import Sequence
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


def captioned_grid(
    pictures: Sequence[np.ndarray], captions: Sequence[str], title: str = "", columns: int = 8, cell: int = 96
) -> np.ndarray:
    """Tile uint8 ``(H, W, C)`` pictures (C in 1, 3, 4) in rows of ``columns``, each scaled to ``cell``
    pixels on its longer side (enlarged by nearest neighbour, so pixels stay visible; shrunk by a box
    filter) with its caption below.

    Returns an ``(H, W, 3)`` uint8 image on a white background, at least as wide as the title. Drawn
    with Pillow: a matplotlib figure of 32 captioned pictures took ~0.5 s to render, this ~20 ms.

    Two columns of 16-pixel cells and 4-pixel gaps are 2 * (16 + 4) + 4 = 44 pixels wide; two rows of a
    cell and one 12-pixel caption line, below a 4-pixel margin, are 4 + 2 * (16 + 12 + 2 * 4) = 76 high:

    >>> captioned_grid([np.zeros((8, 8, 1), np.uint8)] * 3, ["a", "b", "c"], columns=2, cell=16).shape
    (76, 44, 3)
    """
    from PIL import Image, ImageDraw, ImageFont  # matplotlib's own dependency

    if len(pictures) != len(captions) or not pictures:
        raise ValueError(f"captioned_grid: need as many captions as pictures (> 0); got {len(pictures)} and "
                         f"{len(captions)}.")  # fmt: skip
    try:
        font = ImageFont.load_default(size=10)  # Pillow's built-in scalable font (needs FreeType)
    except (ImportError, OSError):  # a Pillow built without FreeType: its fixed bitmap font
        font = ImageFont.load_default()
    line = 12
    lines = max(len(c.splitlines()) for c in captions)
    gap = 4
    columns = min(columns, len(pictures))
    rows = -(-len(pictures) // columns)
    top = line + 2 * gap if title else gap
    width = columns * (cell + gap) + gap
    height = top + rows * (cell + lines * line + 2 * gap)
    width = max(width, int(font.getlength(title)) + 2 * gap)  # a lone picture keeps its title
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text(((width - font.getlength(title)) / 2, gap), title, fill="black", font=font)
    for k, (picture, caption) in enumerate(zip(pictures, captions, strict=True)):
        row, column = divmod(k, columns)
        x, y = gap + column * (cell + gap), top + row * (cell + lines * line + 2 * gap)
        picture = np.asarray(picture)
        image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).convert("RGB")
        scale = cell / max(image.size)
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX)
        canvas.paste(image, (x + (cell - size[0]) // 2, y + (cell - size[1]) // 2))
        for j, text in enumerate(caption.splitlines()):
            left = x + (cell - font.getlength(text)) / 2
            draw.text((left, y + cell + gap + j * line), text, fill="black", font=font)
    return np.asarray(canvas)
