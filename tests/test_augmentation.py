"""Training-time augmentation: training batches only, exact shifts for a known seed, seeded, configured by Hydra."""

from __future__ import annotations

import inspect

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate

from lightning_tricks.data import (
    DigitsDataModule,
    MNIST1DDataModule,
    RandomShiftRotate,
    SyntheticClassificationDataModule,
)
from lightning_tricks.data.augment import AugmentedCollate


def one_pixel_shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The closed form of a shift by at most one pixel with the edge repeated, written out by hand."""
    out = image.clone()
    if dy == 1:
        out[..., 1:, :], out[..., 0, :] = image[..., :-1, :], image[..., 0, :]
    elif dy == -1:
        out[..., :-1, :], out[..., -1, :] = image[..., 1:, :], image[..., -1, :]
    src = out.clone()
    if dx == 1:
        out[..., :, 1:], out[..., :, 0] = src[..., :, :-1], src[..., :, 0]
    elif dx == -1:
        out[..., :, :-1], out[..., :, -1] = src[..., :, 1:], src[..., :, -1]
    return out


def first_batch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(loader))


def test_training_batches_are_one_pixel_shifts_of_the_raw_ones_for_a_known_seed() -> None:
    dm = DigitsDataModule(seed=0, shuffle=False, batch_size=64, augmentation=RandomShiftRotate(1, 0.0))
    dm.setup()
    raw_x, raw_y = dm.datasets["train"].tensors[0][:64], dm.datasets["train"].tensors[1][:64]
    torch.manual_seed(123)
    x, y = next(iter(dm.train_dataloader()))  # no workers: collated, so augmented, here in this process
    torch.manual_seed(123)
    # The loader draws its workers' base seed first, at its first batch (a ResumableDataLoader builds torch's
    # iterator there), then the batch is augmented.
    torch.empty((), dtype=torch.int64).random_()
    offsets = torch.randint(-1, 2, (64, 2))  # the draw RandomShiftRotate makes from the same seed
    expected = torch.stack([one_pixel_shift(raw_x[i], *offsets[i].tolist()) for i in range(64)])
    assert torch.equal(y, raw_y)  # targets untouched, order unchanged
    assert torch.equal(x, expected)
    moved = offsets.abs().sum(1) > 0
    assert moved.sum() > 40  # ~8/9 of the samples move: the comparison above is not vacuous
    assert not torch.equal(x[moved], raw_x[moved])
    assert torch.equal(x[~moved], raw_x[~moved])


def test_signals_are_shifted_only() -> None:
    x = torch.randn(32, 1, 40)
    torch.manual_seed(5)
    out = RandomShiftRotate(max_shift=1, max_degrees=30.0)(x)  # degrees ignored for 1-D signals
    torch.manual_seed(5)
    offsets = torch.randint(-1, 2, (32, 1))
    for i, (o,) in enumerate(offsets.tolist()):
        expected = torch.cat([x[i, :, :1], x[i, :, :-1]], -1) if o == 1 else x[i]
        if o == -1:
            expected = torch.cat([x[i, :, 1:], x[i, :, -1:]], -1)
        assert torch.equal(out[i], expected)


def test_validation_and_test_batches_are_never_augmented() -> None:
    dm = DigitsDataModule(seed=0, augmentation=RandomShiftRotate(2, 30.0))
    dm.setup()
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        assert loader.collate_fn is not None and not isinstance(loader.collate_fn, AugmentedCollate)
        xs = torch.cat([x for x, _ in loader])
        assert torch.equal(xs, dm.datasets[split].tensors[0])
    assert isinstance(dm.train_dataloader().collate_fn, AugmentedCollate)


def test_no_augmentation_by_default() -> None:
    dm = DigitsDataModule(seed=0, shuffle=False)
    assert dm.augmentation is None
    x, _ = first_batch(dm.train_dataloader())
    assert torch.equal(x, dm.datasets["train"].tensors[0][:64])


def augmented_epoch(seed: int, num_workers: int) -> torch.Tensor:
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = MNIST1DDataModule(num_samples=400, seed=0, num_workers=num_workers, augmentation=RandomShiftRotate(3))
    return torch.cat([x for x, _ in dm.train_dataloader()])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_same_augmented_batches_also_in_workers(num_workers: int) -> None:
    first, again, other = (
        augmented_epoch(7, num_workers),
        augmented_epoch(7, num_workers),
        augmented_epoch(8, num_workers),
    )
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_shift": -1}, r"`max_shift` must be an integer >= 0, got -1"),
        ({"max_shift": 1.5}, r"`max_shift` must be an integer >= 0, got 1.5"),
        ({"max_shift": True}, r"`max_shift` must be an integer >= 0, got True"),
        ({"max_degrees": -5}, r"`max_degrees` must be a number in \[0, 180\], got -5"),
        ({"max_degrees": 270}, r"`max_degrees` must be a number in \[0, 180\], got 270"),
        ({"max_degrees": float("nan")}, r"`max_degrees` must be a number in \[0, 180\], got nan"),
        ({"max_degrees": "10"}, r"`max_degrees` must be a number in \[0, 180\], got '10'"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RandomShiftRotate(**kwargs)


def test_bad_augmentations_fail_at_setup_not_mid_epoch() -> None:
    with pytest.raises(ValueError, match=r"`augmentation` must be None or a callable.*got 'shift'"):
        DigitsDataModule(augmentation="shift")
    # A shift as large as the image fails every time, not only on an unlucky draw.
    too_far = DigitsDataModule(augmentation=RandomShiftRotate(max_shift=8))
    with pytest.raises(
        ValueError, match=r"DigitsDataModule: `augmentation` .*`max_shift` must be smaller than .*\(8, 8\), got 8"
    ):
        too_far.setup()
    tabular = SyntheticClassificationDataModule(num_samples=100, augmentation=RandomShiftRotate())
    with pytest.raises(ValueError, match=r"fails on inputs of shape \(16,\)"):
        tabular.setup()
    rng = torch.get_rng_state()
    DigitsDataModule(augmentation=RandomShiftRotate(max_shift=2, max_degrees=20.0)).setup()
    assert torch.equal(torch.get_rng_state(), rng)  # the trial run does not move the run's random numbers


def test_augmentation_that_changes_the_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"must return a batch of the same shape \(2, 1, 8, 8\), got \(2, 64\)"):
        DigitsDataModule(augmentation=lambda x: x.flatten(1)).setup()


def test_hydra_option_instantiates_and_reaches_the_data_module(compose_train) -> None:
    from lightning_tricks.commands.train import build_data_and_model

    cfg = compose_train("augmentation=shift_rotate", "augmentation.max_shift=2")
    # the YAML names the constructor's arguments, all of them
    assert set(cfg.augmentation) - {"_target_"} == set(inspect.signature(RandomShiftRotate).parameters)
    datamodule, _ = build_data_and_model(cfg)
    assert isinstance(datamodule.augmentation, RandomShiftRotate)
    assert (datamodule.augmentation.max_shift, datamodule.augmentation.max_degrees) == (2, 10.0)
    augmentation = instantiate(compose_train("data=mnist1d", "augmentation=shift_rotate").data.augmentation)
    assert isinstance(augmentation, RandomShiftRotate)
    # off by default, and `~augmentation` switches it off again
    assert build_data_and_model(compose_train())[0].augmentation is None
    assert compose_train("recipe=regularize", "~augmentation").data.augmentation is None
