"""Generated data whose true statistics are known exactly: for tests and closed-form checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lightning_tricks.data.base import ArrayDataModule
from lightning_tricks.utilities.arguments import check_int


def exact_counts(priors: Sequence[float], n: int) -> np.ndarray:
    """Class counts summing to ``n`` as close to ``priors * n`` as integers allow (largest remainder).

    >>> exact_counts([10 / 11, 1 / 11], 2200).tolist()
    [2000, 200]
    """
    p = np.asarray(priors, dtype=np.float64)
    raw = p / p.sum() * n
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return counts


class SyntheticClassificationDataModule(ArrayDataModule):
    """Gaussian blobs, one per class, with exact class counts.

    Args:
        num_samples, num_features, num_classes: sizes.
        priors: class probabilities (None: balanced); counts are exact, see
            ``true_priors``. ``[10/11, 1/11]`` is the recipe's 1:10 imbalance.
        class_sep: distance scale between class centres (unit noise).
        task: ``"multiclass"`` (integer targets) or ``"binary"`` (two
            classes, float 0/1 targets for a one-output sigmoid model).
    """

    def __init__(
        self,
        num_samples: int = 2000,
        num_features: int = 16,
        num_classes: int = 4,
        priors: Sequence[float] | None = None,
        class_sep: float = 2.0,
        task: str = "multiclass",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.task = self._check_task(task, ("multiclass", "binary"))
        self.num_samples = check_int(num_samples, "num_samples", minimum=10)
        self.num_features = check_int(num_features, "num_features")
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        if task == "binary" and num_classes != 2:
            raise ValueError(f"`task='binary'` needs `num_classes=2`, got num_classes={num_classes}.")
        if priors is None:
            priors = [1.0 / num_classes] * num_classes
        priors = [float(p) for p in priors]
        if len(priors) != num_classes or any(p <= 0 for p in priors):
            raise ValueError(f"`priors` must be {num_classes} positive numbers (one per class), got {priors}.")
        self.priors = priors
        self.class_sep = float(class_sep)
        self.input_shape = (self.num_features,)
        self.counts = exact_counts(priors, self.num_samples)
        #: The exact class frequencies of the whole generated set.
        self.true_priors = self.counts / self.num_samples

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        centres = rng.normal(size=(self.num_classes, self.num_features)) * self.class_sep
        y = np.repeat(np.arange(self.num_classes), self.counts)
        x = centres[y] + rng.normal(size=(self.num_samples, self.num_features))
        order = rng.permutation(self.num_samples)
        return x[order].astype(np.float32), y[order]


class SyntheticRegressionDataModule(ArrayDataModule):
    """Linear targets ``x @ w`` scaled to a chosen mean and standard deviation, plus noise.

    Targets are *not* standardised: a model must learn (or be initialised
    with, recipe 2.5) the mean ``target_mean``. ``true_mean``/``true_std``
    are the generated set's exact statistics.
    """

    def __init__(
        self,
        num_samples: int = 2000,
        num_features: int = 16,
        num_outputs: int = 1,
        target_mean: float = 50.0,
        target_std: float = 5.0,
        noise: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.task = "regression"
        self.num_samples = check_int(num_samples, "num_samples", minimum=10)
        self.num_features = check_int(num_features, "num_features")
        self.n_outputs = check_int(num_outputs, "num_outputs")
        if target_std < 0 or noise < 0:
            raise ValueError(f"`target_std` and `noise` must be >= 0, got {target_std} and {noise}.")
        self.target_mean, self.target_std, self.noise = float(target_mean), float(target_std), float(noise)
        self.input_shape = (self.num_features,)
        self.true_mean: np.ndarray | None = None
        self.true_std: np.ndarray | None = None

    def _num_regression_outputs(self) -> int:
        return self.n_outputs

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        x = rng.normal(size=(self.num_samples, self.num_features))
        signal = x @ rng.normal(size=(self.num_features, self.n_outputs))
        signal = (signal - signal.mean(0)) / signal.std(0)
        y = self.target_mean + self.target_std * signal + self.noise * rng.normal(size=signal.shape)
        self.true_mean, self.true_std = y.mean(0), y.std(0)
        return x.astype(np.float32), y.astype(np.float32)
