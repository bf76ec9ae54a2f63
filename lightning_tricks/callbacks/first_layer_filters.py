"""Recipe 4 (end): visualise the first layer's weights — they should look like edges, not noise."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.media import log_image
from lightning_tricks.utilities.plots import new_figure
from lightning_tricks.utilities.protocol import AdapterError


def first_layer(module: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The named layer, else the first Conv or Linear layer in registration order."""
    if name is not None:
        return name, module.get_submodule(name)
    for layer_name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            return layer_name, layer
    raise AdapterError(f"{type(module).__name__} has no Conv1d/Conv2d/Linear layer; pass `layer=` to name one.")


def filters_as_images(weight: torch.Tensor, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """``(N, C, H, W)`` pictures of the filters: conv kernels as they are, linear rows reshaped to the input."""
    w = weight.detach().float().cpu()
    if w.ndim == 4:  # Conv2d: (out, in, kh, kw); show RGB as colour, else the first input channel
        return w if w.shape[1] == 3 else w[:, :1]
    if w.ndim == 3:  # Conv1d: (out, in, k) as 1 x k strips of the first channel
        return w[:, :1, None, :]
    if input_shape is not None and math.prod(input_shape) == w.shape[1]:
        shape = (
            input_shape
            if len(input_shape) == 3
            else (1, *input_shape)
            if len(input_shape) == 2
            else (1, 1, input_shape[0])
        )
        return w.reshape(w.shape[0], *shape)[:, :1] if shape[0] not in (1, 3) else w.reshape(w.shape[0], *shape)
    return w[:, None, None, :]  # rows as strips


class FirstLayerFilters(Callback):
    """Every ``every_n_epochs`` epochs, log the first layer's filters as an image grid.

    Conv kernels are shown as they are; a first ``nn.Linear``'s rows are reshaped to the model's
    input shape (``example_input_array`` or ``input_shape`` on the module), so an MLP on images shows
    pictures too. Each filter is scaled on its own (symmetric around 0: grey is 0), so structure,
    not magnitude, is what one sees.
    """

    def __init__(self, every_n_epochs: int = 1, layer: str | None = None, max_filters: int = 64) -> None:
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", owner="FirstLayerFilters")
        self.max_filters = check_int(max_filters, "max_filters", owner="FirstLayerFilters")
        self.layer = layer
        self.last_images: torch.Tensor | None = None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        name, layer = first_layer(pl_module, self.layer)
        example = getattr(pl_module, "example_input_array", None)
        shape = (
            tuple(example.shape[1:]) if isinstance(example, torch.Tensor) else getattr(pl_module, "input_shape", None)
        )
        images = filters_as_images(layer.weight, tuple(shape) if shape else None)[: self.max_filters]
        self.last_images = images
        log_image(trainer, "tricks/first_layer_filters", self._figure(images, name, trainer.current_epoch))

    @staticmethod
    def _figure(images: torch.Tensor, name: str, epoch: int) -> Any:
        n = images.shape[0]
        cols = int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
        figure = new_figure(0.9 * cols + 0.5, 0.9 * rows + 0.7)
        axes = np.atleast_1d(figure.subplots(rows, cols)).ravel()
        for i, ax in enumerate(axes):
            ax.axis("off")
            if i >= n:
                continue
            image = images[i].permute(1, 2, 0).numpy()
            scale = float(np.abs(image).max()) or 1.0
            if image.shape[-1] == 3:
                ax.imshow(np.clip(0.5 + 0.5 * image / scale, 0, 1))
            else:
                ax.imshow(image[..., 0], cmap="RdBu_r", vmin=-scale, vmax=scale)
        figure.suptitle(f"first-layer filters of {name!r}, epoch {epoch} (edges good, noise bad)")
        return figure
