"""MNIST-1D (Greydanus, 2020): 1-D signals of 10 digit templates, generated offline."""

from __future__ import annotations

import numpy as np

from lightning_tricks.data.base import ArrayDataModule
from lightning_tricks.utilities.arguments import check_int


class MNIST1DDataModule(ArrayDataModule):
    """``(1, 40)`` signals of 10 classes from the ``mnist1d`` generator (never its download URL).

    The generator's own seed stays at the canonical 42, so the samples are the
    published data set's; ``seed`` chooses the split.
    """

    input_shape = (1, 40)
    task = "multiclass"
    num_classes = 10

    def __init__(self, num_samples: int = 5000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_samples = check_int(num_samples, "num_samples", minimum=20)

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = self.num_samples
        data = make_dataset(args)
        x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None]
        y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
        return x, y
