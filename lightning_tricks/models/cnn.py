"""A small convolutional net: 2-D for images, 1-D for signals, global average pooling head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_tricks.models.base import OptimizerFactory, ReferenceModule, SchedulerFactory


class CNN(ReferenceModule):
    """``Conv -> ReLU -> MaxPool`` blocks, global average pooling, ``Linear`` output layer.

    ``input_shape`` is ``(C, L)`` for signals (Conv1d) or ``(C, H, W)`` for
    images (Conv2d). Global average pooling instead of a large fully connected
    head keeps the model small (recipe 4).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        task: str = "multiclass",
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 3,
        dropout: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float | None = None,
    ) -> None:
        super().__init__(input_shape, num_outputs, task, optimizer, scheduler, weight_decay)
        if len(self.input_shape) not in (2, 3):
            raise ValueError(f"CNN: `input_shape` must be (C, L) or (C, H, W), got {tuple(input_shape)}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        two_d = len(self.input_shape) == 3
        conv, pool, gap = (
            (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
            if two_d
            else (nn.Conv1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d)
        )
        layers: list[nn.Module] = []
        width = self.input_shape[0]
        for i, out in enumerate(channels):
            layers += [conv(width, int(out), kernel_size, padding=kernel_size // 2), nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(pool(2))
            width = int(out)
        layers += [gap(1), nn.Flatten()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)
