"""Reference data: deterministic splits from the seed, exact known statistics, clear errors, no download."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lightning_tricks.data import (
    DigitsDataModule,
    MNIST1DDataModule,
    SyntheticClassificationDataModule,
    SyntheticRegressionDataModule,
)
from lightning_tricks.data.synthetic import exact_counts


def test_digits_split_is_deterministic_disjoint_and_complete() -> None:
    a, b, c = DigitsDataModule(seed=0), DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    for dm in (a, b, c):
        dm.setup()
    sizes = [len(a.datasets[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes == [1257, 270, 270]
    assert torch.equal(a.datasets["val"].tensors[0], b.datasets["val"].tensors[0])
    assert not torch.equal(a.datasets["val"].tensors[0], c.datasets["val"].tensors[0])
    # a partition: the splits' labels add up to the whole set's, class by class
    labels = torch.cat([a.datasets[s].tensors[1] for s in ("train", "val", "test")])
    assert torch.bincount(labels).tolist() == np.bincount(load_digits().target).tolist()
    x, y = a.datasets["train"].tensors
    assert x.shape[1:] == (1, 8, 8) and y.dtype == torch.long
    # standardised with train statistics: train has mean 0 / std 1, val is close but not exact
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-3


def test_split_is_stratified() -> None:
    dm = SyntheticClassificationDataModule(num_samples=2200, num_classes=2, priors=[10 / 11, 1 / 11], task="binary")
    dm.setup()
    # 2000 negatives and 200 positives split 70/15/15 with stratification: exact up to one sample
    expected = {"train": (1400, 140), "val": (300, 30), "test": (300, 30)}
    for split, (negatives, positives) in expected.items():
        y = dm.datasets[split].tensors[1]
        assert y.dtype == torch.float32
        assert abs(int((y == 0).sum()) - negatives) <= 1 and abs(int((y == 1).sum()) - positives) <= 1


def test_synthetic_priors_are_exact() -> None:
    assert exact_counts([0.5, 0.3, 0.2], 7).tolist() == [4, 2, 1]
    assert exact_counts([1, 1, 1], 10).sum() == 10
    dm = SyntheticClassificationDataModule(num_samples=1100, num_classes=2, priors=[10 / 11, 1 / 11], task="binary")
    x, y = dm.load_arrays()
    assert dm.true_priors.tolist() == [1000 / 1100, 100 / 1100]
    assert np.bincount(y).tolist() == [1000, 100] and x.shape == (1100, 16)
    balanced = SyntheticClassificationDataModule(num_samples=400, num_classes=4)
    assert np.bincount(balanced.load_arrays()[1]).tolist() == [100] * 4


def test_synthetic_regression_targets_keep_their_scale() -> None:
    dm = SyntheticRegressionDataModule(num_samples=1000, num_outputs=2, target_mean=50.0, target_std=5.0, noise=0.0)
    _, y = dm.load_arrays()
    assert np.allclose(y.mean(0), 50.0, atol=1e-4) and np.allclose(y.std(0), 5.0, atol=1e-4)
    dm.setup()
    assert dm.num_outputs == 2 and dm.task == "regression"
    assert dm.datasets["train"].tensors[1].shape[1] == 2  # targets are not standardised: mean stays ~50
    assert abs(dm.datasets["train"].tensors[1].mean().item() - 50) < 1


def test_mnist1d_is_generated_offline() -> None:
    dm = MNIST1DDataModule(num_samples=200, seed=0)
    dm.setup()
    x, y = dm.datasets["train"].tensors
    assert x.shape[1:] == (1, 40) and set(y.tolist()) <= set(range(10))
    assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == 200


def test_loaders_shuffle_train_only() -> None:
    dm = DigitsDataModule(batch_size=16)
    dm.setup()
    assert isinstance(dm.train_dataloader().sampler, torch.utils.data.RandomSampler)
    assert isinstance(dm.val_dataloader().sampler, torch.utils.data.SequentialSampler)
    assert next(iter(dm.test_dataloader()))[0].shape == (16, 1, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"`batch_size` must be an integer >= 1, got 0"),
        ({"num_workers": -1}, r"`num_workers` must be an integer >= 0, got -1"),
        ({"val_fraction": 1.5}, r"`val_fraction` must be a number in \[0, 1\), got 1.5"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, r"`val_fraction` \+ `test_fraction` must be < 1"),
    ],
)
def test_bad_loader_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)


def test_bad_synthetic_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"`task` must be one of .*got 'clasification'"):
        SyntheticClassificationDataModule(task="clasification")
    with pytest.raises(ValueError, match=r"`task` must be one of \('multiclass', 'binary'\), got 'regression'"):
        SyntheticClassificationDataModule(task="regression")
    with pytest.raises(ValueError, match=r"`priors` must be 3 positive numbers"):
        SyntheticClassificationDataModule(num_classes=3, priors=[0.5, 0.5])
    with pytest.raises(ValueError, match="needs `num_classes=2`"):
        SyntheticClassificationDataModule(num_classes=3, task="binary")
    with pytest.raises(ValueError, match=r"10 samples .* too few samples per class .*`num_samples`"):
        SyntheticClassificationDataModule(num_samples=10, num_classes=4).setup()
