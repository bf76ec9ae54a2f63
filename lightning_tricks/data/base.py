"""A DataModule over in-memory arrays, split train/val/test deterministically from a seed."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.data.augment import Augmentation, AugmentedCollate, check_augmentation
from lightning_tricks.data.resumable import ResumableDataLoader
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.protocol import check_task


class ArrayDataModule(pl.LightningDataModule):
    """Serves ``(inputs, targets)`` batches of arrays that a subclass loads or generates.

    The split is stratified for classification and depends only on ``seed``, so
    the same seed gives the same train/val/test sets on every rank and every
    run. Inputs are standardised with statistics of the training split only
    (no information leaks from val/test); regression targets are left as they
    are, so their real mean and scale reach the model (recipe 2.5).

    ``augmentation`` (None: off) is applied to each *training* batch only (recipe 4), in the
    train loader's ``collate_fn`` (:class:`~lightning_tricks.data.augment.AugmentedCollate`), so
    it runs in the loader workers and draws from their seeded RNG; val/test batches are the data
    as it is. It acts on the standardised inputs.

    Subclasses implement :meth:`load_arrays` and set ``input_shape``, ``task``
    and ``num_classes`` (None for regression) in ``__init__``.
    """

    input_shape: tuple[int, ...]
    task: str
    num_classes: int | None = None

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        num_workers: int = 0,
        seed: int = 42,
        shuffle: bool = True,
        normalize: bool = True,
        augmentation: Augmentation | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = check_int(batch_size, "batch_size")
        self.num_workers = check_int(num_workers, "num_workers", minimum=0)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}.")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"`val_fraction` + `test_fraction` must be < 1 to leave training data, got "
                f"{val_fraction} + {test_fraction}."
            )
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = seed
        self.shuffle = shuffle
        self.normalize = normalize
        # Type-checked now; checked against the input shape in `setup` (a subclass may set it late).
        self.augmentation = check_augmentation(augmentation, (), type(self).__name__, try_on_batch=False)
        self.datasets: dict[str, TensorDataset] = {}

    @property
    def num_outputs(self) -> int:
        """Width of the output layer the task needs."""
        if self.task == "binary":
            return 1
        if self.task in ("multiclass", "multilabel"):
            assert self.num_classes is not None
            return self.num_classes
        return self._num_regression_outputs()

    def _num_regression_outputs(self) -> int:
        raise NotImplementedError

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All samples: inputs ``(N, *input_shape)`` and targets ``(N,)`` or ``(N, outputs)``."""
        raise NotImplementedError

    def _split(self, x: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        stratify = y if self.task in ("multiclass", "binary") else None
        index = np.arange(len(x))
        held_out = self.val_fraction + self.test_fraction
        if held_out == 0:
            return {"train": (x, y), "val": (x[:0], y[:0]), "test": (x[:0], y[:0])}
        train_idx, rest = train_test_split(index, test_size=held_out, random_state=self.seed, stratify=stratify)
        if self.test_fraction == 0:
            val_idx, test_idx = rest, rest[:0]
        elif self.val_fraction == 0:
            val_idx, test_idx = rest[:0], rest
        else:
            val_idx, test_idx = train_test_split(
                rest,
                test_size=self.test_fraction / held_out,
                random_state=self.seed,
                stratify=None if stratify is None else stratify[rest],
            )
        return {name: (x[idx], y[idx]) for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        check_augmentation(self.augmentation, self.input_shape, type(self).__name__)
        x, y = self.load_arrays()
        try:
            splits = self._split(np.asarray(x, dtype=np.float32), np.asarray(y))
        except ValueError as err:  # sklearn's words name its own arguments, not ours
            raise ValueError(
                f"{type(self).__name__}: {len(x)} samples with val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction} leave too few samples per class for a stratified split "
                f"({err}); use more samples (`num_samples`) or larger fractions."
            ) from err
        if self.normalize:
            train_x = splits["train"][0]
            # Per feature for tabular data, one scale per channel for signals and images.
            axes = (0,) if train_x.ndim == 2 else (0, *range(2, train_x.ndim))
            mean = train_x.mean(axis=axes, keepdims=True)
            std = train_x.std(axis=axes, keepdims=True)
            std[std == 0] = 1.0
            splits = {k: ((v[0] - mean) / std, v[1]) for k, v in splits.items()}
        target_dtype = torch.long if self.task == "multiclass" else torch.float32
        self.datasets = {
            k: TensorDataset(torch.as_tensor(v[0], dtype=torch.float32), torch.as_tensor(v[1], dtype=target_dtype))
            for k, v in splits.items()
        }

    def _loader(self, split: str, shuffle: bool, augment: bool = False) -> DataLoader:
        if not self.datasets:
            self.setup()
        collate = AugmentedCollate(self.augmentation) if augment and self.augmentation is not None else None
        # The training loader keeps its position in checkpoints, so a run resumed mid-epoch is exact
        # (ResumableDataLoader); evaluation loaders are read whole, and need none.
        loader_class = ResumableDataLoader if split == "train" else DataLoader
        return loader_class(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            # Not persistent: persistent workers keep their random state from epoch to epoch, in processes
            # no checkpoint holds; fresh workers per epoch keep a resumed run exact.
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        # Recipe 3.5: a fresh order every epoch (the sampler reshuffles on each pass).
        # Recipe 4: augmentation on the training split only.
        return self._loader("train", self.shuffle, augment=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def _check_task(self, task: str, allowed: tuple[str, ...]) -> str:
        check_task(task, argument="task")
        if task not in allowed:
            raise ValueError(f"{type(self).__name__}: `task` must be one of {allowed}, got {task!r}.")
        return task
