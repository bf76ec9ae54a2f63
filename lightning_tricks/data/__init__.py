"""Reference DataModules on data that needs no download."""

from lightning_tricks.data.augment import AugmentedCollate, RandomShiftRotate
from lightning_tricks.data.base import ArrayDataModule
from lightning_tricks.data.digits import DigitsDataModule
from lightning_tricks.data.mnist1d import MNIST1DDataModule
from lightning_tricks.data.resumable import ResumableDataLoader
from lightning_tricks.data.synthetic import SyntheticClassificationDataModule, SyntheticRegressionDataModule

__all__ = [
    "ArrayDataModule",
    "AugmentedCollate",
    "DigitsDataModule",
    "MNIST1DDataModule",
    "RandomShiftRotate",
    "ResumableDataLoader",
    "SyntheticClassificationDataModule",
    "SyntheticRegressionDataModule",
]
