"""A multi-layer perceptron: the simple model that cannot be wrong (recipe 2)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_tricks.models.base import OptimizerFactory, ReferenceModule, SchedulerFactory, flat_size


class MLP(ReferenceModule):
    """Flatten, then ``Linear -> ReLU -> Dropout`` per hidden size, then a ``Linear`` output layer.

    >>> MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_sizes=[32]).net
    Sequential(
      (0): Flatten(start_dim=1, end_dim=-1)
      (1): Linear(in_features=64, out_features=32, bias=True)
      (2): ReLU()
      (3): Linear(in_features=32, out_features=10, bias=True)
    )
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        task: str = "multiclass",
        hidden_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float | None = None,
    ) -> None:
        super().__init__(input_shape, num_outputs, task, optimizer, scheduler, weight_decay)
        if not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        layers: list[nn.Module] = [nn.Flatten()]
        width = flat_size(self.input_shape)
        for size in hidden_sizes:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(size)
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)
