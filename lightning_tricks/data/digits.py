"""scikit-learn's handwritten digits: 1797 8x8 grey images of 10 classes, shipped inside scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from lightning_tricks.data.base import ArrayDataModule


class DigitsDataModule(ArrayDataModule):
    """The built-in data set: ``(1, 8, 8)`` images, 10 classes, no download.

    >>> dm = DigitsDataModule(seed=0); dm.setup()
    >>> [len(dm.datasets[s]) for s in ("train", "val", "test")]
    [1257, 270, 270]
    """

    input_shape = (1, 8, 8)
    task = "multiclass"
    num_classes = 10

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        digits = load_digits()
        return digits.images[:, None].astype(np.float32), digits.target.astype(np.int64)
