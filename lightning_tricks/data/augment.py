"""Training-time data augmentation (recipe 4: "augment, boldly"): random views of each training batch.

The math lives in :mod:`lightning_tricks.functional.augment`; here are the stateful shells a
data module holds. An augmentation is any callable ``inputs -> inputs`` on a whole batch;
:class:`AugmentedCollate` applies it to the *training* loader only, per batch, inside the
loader's ``collate_fn``. That is where it runs in the loader's worker processes too (so the
main process is not slowed), and where it draws from torch's global RNG, which Lightning
seeds per worker (``seed_everything(workers=True)`` / our ``SeedEverything``): the same seed
gives the same augmented batches. Validation and test batches are never augmented, so the
metrics measure the data as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import default_collate

from lightning_tricks.functional.augment import random_shift_rotate
from lightning_tricks.utilities.arguments import check_float, check_int

Augmentation = Callable[[torch.Tensor], torch.Tensor]


class RandomShiftRotate:
    """Shift each sample by a whole number of pixels/steps in ``[-max_shift, max_shift]`` per
    spatial dimension and, for images, rotate it by an angle in ``[-max_degrees, max_degrees]``.

    For ``(N, C, L)`` signals (MNIST-1D) only the shift applies: a rotation has no meaning in
    one dimension, so ``max_degrees`` is ignored there. Borders repeat the edge (the background
    of a standardised image), see :func:`~lightning_tricks.functional.augment.shift`.

    >>> RandomShiftRotate(max_shift=1, max_degrees=0.0)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, max_shift: int = 1, max_degrees: float = 10.0) -> None:
        self.max_shift = check_int(max_shift, "max_shift", minimum=0, owner="RandomShiftRotate")
        # Beyond 180 degrees the range only repeats angles; digits need much less (a 6 is not a 9).
        self.max_degrees = check_float(
            max_degrees, "max_degrees", "a number in [0, 180]", lambda v: 0 <= v <= 180, owner="RandomShiftRotate"
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Checked on every batch, not only when an unlucky draw hits the largest offset.
        if x.ndim in (3, 4) and self.max_shift >= min(x.shape[2:]):
            raise ValueError(
                f"RandomShiftRotate: `max_shift` must be smaller than the spatial size {tuple(x.shape[2:])}, "
                f"got {self.max_shift}."
            )
        return random_shift_rotate(x, self.max_shift, self.max_degrees)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_shift={self.max_shift}, max_degrees={self.max_degrees})"


class AugmentedCollate:
    """A ``collate_fn``: stack the samples as usual, then augment the inputs (targets untouched).

    A plain class (not a closure) so that worker processes started with ``spawn`` can pickle it.
    """

    def __init__(self, augmentation: Augmentation) -> None:
        self.augmentation = augmentation

    def __call__(self, samples: Sequence[Any]) -> Any:
        inputs, targets = default_collate(samples)
        return self.augmentation(inputs), targets

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.augmentation!r})"


def check_augmentation(
    augmentation: Any, input_shape: Sequence[int], owner: str, try_on_batch: bool = True
) -> Augmentation | None:
    """``augmentation`` if it is None or a callable that keeps the shape of a batch of ``input_shape``.

    Tried once on a zero batch of two samples, so a shift larger than the image or an image
    augmentation of tabular rows fails when the data is set up, not in a loader worker mid-epoch. The try runs
    inside :func:`isolate_rng`: checking does not move the run's random numbers. ``try_on_batch=False``
    checks only that it is callable (when the input shape is not known yet).
    """
    if augmentation is None:
        return None
    if not callable(augmentation):
        raise ValueError(
            f"{owner}: `augmentation` must be None or a callable on a batch of inputs "
            f"(e.g. RandomShiftRotate()), got {augmentation!r}."
        )
    if not try_on_batch:
        return augmentation
    batch = torch.zeros(2, *input_shape)
    try:
        with isolate_rng():
            out = augmentation(batch)
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            f"{owner}: `augmentation` {augmentation!r} fails on inputs of shape {tuple(input_shape)}: {err}"
        ) from err
    if not isinstance(out, torch.Tensor) or out.shape != batch.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{owner}: `augmentation` {augmentation!r} must return a batch of the same shape "
            f"{tuple(batch.shape)}, got {got}."
        )
    return augmentation
