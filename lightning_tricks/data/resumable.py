"""A ``DataLoader`` that resumes exactly where a checkpoint left it, even in the middle of an epoch.

Lightning saves a training loader's position in its checkpoints only if the loader has
``state_dict`` / ``load_state_dict`` (``FitLoop.on_save_checkpoint`` stores them under
``loops.fit_loop.state_dict.combined_loader``, and gives them back before the first batch of the
resumed run). A plain ``DataLoader`` has neither: a run resumed from a checkpoint written in the
middle of an epoch draws the rest of that epoch from a new permutation (and Lightning warns that
the loader "is not resumable").

:class:`ResumableDataLoader` is a drop-in ``DataLoader`` (same arguments) that keeps the position.
Its state is, per epoch, the random state the epoch's order was drawn from and the number of
batches handed out. On resume it sets that random state again, builds the epoch's iterator (the
same permutation and the same worker seeds as before), **replays** the batches already trained on
and discards them, then puts the process's random state back as the checkpoint left it. Replaying,
rather than skipping sample indices, is what makes the rest of the epoch exact with loader workers
too: random augmentation inside a worker draws from that worker's own generator, which no
checkpoint holds; a worker that loads the same batches again reaches the same state. The cost is
loading (not training on) those batches once.

Three details keep the order a function of the run's seed and the epoch alone:

* the epoch's iterator is built at its first batch, not at ``iter()``. Lightning calls ``iter()``
  on the first epoch's loader before ``on_train_start`` and before it calls ``set_epoch`` on the
  sampler; built lazily, the order is drawn at the same point in every epoch, of an interrupted or
  a resumed run, and a ``DistributedSampler`` already has its epoch.
* ``shuffle=True`` / ``False`` samplers are torch's ``RandomSampler`` / ``SequentialSampler`` with a
  ``set_epoch`` that only records the epoch Lightning sets. On resume the loader can then tell a
  checkpoint written inside an epoch (same epoch: replay) from one written at its end (next epoch:
  a fresh order), even with ``limit_train_batches``. Under DDP Lightning replaces them with a
  ``DistributedSampler`` as it does for a plain ``DataLoader`` (``shuffle`` is kept).
* under DDP every rank's state is gathered into the checkpoint (rank 0 writes it), and each rank
  takes its own back: ranks draw their worker seeds from their own random streams.

What cannot be resumed exactly is said once, as a warning, on resume: an ``IterableDataset`` (the
loader cannot save the stream's own position), ``persistent_workers=True`` (the workers' random
state from earlier epochs lives only in those processes), a different number of processes or a
different number of batches per epoch.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from lightning_tricks.functional.seed import collect_rng_states, set_rng_states

_DATALOADER_SIGNATURE = inspect.signature(DataLoader.__init__)


class _EpochRandomSampler(RandomSampler):
    """torch's ``RandomSampler``, plus the epoch Lightning sets (it calls ``set_epoch`` on samplers that have it)."""

    epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class _EpochSequentialSampler(SequentialSampler):
    """torch's ``SequentialSampler``, plus the epoch Lightning sets."""

    epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position Lightning saves in checkpoints: a resumed run trains on exactly the
    batches an uninterrupted one would, at any step, with loader workers and under DDP.

    Takes the arguments of ``torch.utils.data.DataLoader``. With :class:`~lightning_tricks.SeedEverything`
    (which restores the RNG of every rank) a run resumed from a checkpoint written at any step ends with
    the weights of the uninterrupted run, bit for bit on CPU.

    Example::

        def train_dataloader(self):
            return ResumableDataLoader(self.train_set, batch_size=64, shuffle=True, num_workers=4)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = _DATALOADER_SIGNATURE.bind(self, *args, **kwargs)
        arguments = bound.arguments
        dataset = arguments["dataset"]
        if (
            arguments.get("sampler") is None
            and arguments.get("batch_sampler") is None
            and not isinstance(dataset, IterableDataset)
        ):
            # The sampler torch would build for `shuffle`, plus `set_epoch` (see the module's docstring).
            shuffle = bool(arguments.pop("shuffle", False))
            generator = arguments.get("generator")
            arguments["sampler"] = (
                _EpochRandomSampler(dataset, generator=generator) if shuffle else _EpochSequentialSampler(dataset)
            )
        super().__init__(*bound.args[1:], **bound.kwargs)
        self._resume: dict[str, Any] | None = None  # the state `load_state_dict` gave, for the next `iter()`
        self._current: _EpochIterator | None = None  # the iterator that handed out the latest batch

    def __iter__(self) -> Iterator[Any]:
        # Lightning calls `load_state_dict` and then, at once, `iter()`: that iterator continues the epoch.
        resume, self._resume = self._resume, None
        return _EpochIterator(self, resume)

    def state_dict(self) -> dict[str, Any]:
        """Every rank's position in its current epoch (collective under DDP: Lightning calls it on every rank)."""
        local = self._current.state() if self._current is not None else None
        states = [local]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world_size = torch.distributed.get_world_size()
            if world_size > 1:
                states = [None] * world_size
                torch.distributed.all_gather_object(states, local)
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from ``state_dict`` at the next ``iter()``."""
        states = state_dict.get("ranks", [])
        rank, world_size = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if len(states) != world_size:
            rank_zero_warn(
                f"ResumableDataLoader: the checkpoint holds the loader positions of {len(states)} processes but "
                f"this run has {world_size}; the interrupted epoch is drawn again in a new order, so the resumed "
                f"run is not identical to an uninterrupted one."
            )
            return
        state = states[rank]
        if state is None:
            return
        if self.persistent_workers and self.num_workers > 0:
            rank_zero_warn(
                "ResumableDataLoader: `persistent_workers=True` keeps worker processes, and their random state, "
                "from one epoch to the next; a resumed run starts new ones, so random transforms in the workers "
                "differ from an uninterrupted run. Use `persistent_workers=False` for an exact resume."
            )
        self._resume = state

    def _sampler_epoch(self) -> int | None:
        """The epoch Lightning set on the sampler (None: the sampler records none)."""
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            epoch = getattr(sampler, "epoch", None)
            if isinstance(epoch, int):
                return epoch
        return None

    def _generators(self) -> list[torch.Generator]:
        """The explicit generators the loader's order is drawn from (torch's global RNG is saved apart)."""
        found: dict[int, torch.Generator] = {}
        for owner in (self, self.sampler, getattr(self.batch_sampler, "sampler", None)):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator):
                found.setdefault(id(generator), generator)
        return list(found.values())


class _EpochIterator(Iterator[Any]):
    """One pass over a :class:`ResumableDataLoader`: builds torch's iterator at the first batch and counts batches."""

    def __init__(self, loader: ResumableDataLoader, resume: dict[str, Any] | None) -> None:
        self._loader = loader
        self._resume = resume
        self._iterator: Iterator[Any] | None = None
        self.epoch: int | None = None
        self.yielded = 0
        self._rng: dict[str, Any] | None = None
        self._generator_states: list[torch.Tensor] = []

    def __iter__(self) -> _EpochIterator:
        return self

    def __len__(self) -> int:
        return len(self._loader)

    def __next__(self) -> Any:
        if self._iterator is None:
            self._start()
        assert self._iterator is not None
        batch = next(self._iterator)
        self.yielded += 1
        self._loader._current = self
        return batch

    def state(self) -> dict[str, Any]:
        """What the loader needs to rebuild this pass and reach its position (tensors and plain values only,
        so checkpoints still load with ``torch.load(weights_only=True)``)."""
        loader = self._loader
        return {
            "epoch": self.epoch,
            "yielded": self.yielded,
            "length": _length(loader),
            "rng": self._rng,
            "generators": self._generator_states,
            "generators_now": [g.get_state() for g in loader._generators()],
        }

    def _start(self) -> None:
        loader = self._loader
        self.epoch = loader._sampler_epoch()
        resume, self._resume = self._resume, None
        if resume is not None and self._continues(resume):
            self._continue(resume)
            return
        if resume is not None:
            # A checkpoint from the end of an epoch: explicit generators go on from where that run had them.
            _set_generator_states(loader._generators(), resume["generators_now"])
        self._rng = collect_rng_states()
        self._generator_states = [g.get_state() for g in loader._generators()]
        self._iterator = DataLoader.__iter__(loader)

    def _continues(self, resume: dict[str, Any]) -> bool:
        """Whether ``resume`` is a position inside the epoch this pass is (a mid-epoch checkpoint)."""
        loader = self._loader
        length = _length(loader)
        if resume["epoch"] is not None and self.epoch is not None:
            inside = resume["epoch"] == self.epoch
        else:  # a sampler without epochs: only the count tells
            inside = length is None or resume["yielded"] < length
        if not inside or resume["yielded"] == 0:
            return False
        if resume["length"] != length:
            rank_zero_warn(
                f"ResumableDataLoader: the checkpoint was written at batch {resume['yielded']} of an epoch of "
                f"{resume['length']} batches, but the training loader now has {length}; the rest of the epoch "
                f"is drawn in a new order."
            )
            return False
        if isinstance(loader.dataset, IterableDataset):
            rank_zero_warn(
                f"ResumableDataLoader: resuming at batch {resume['yielded']} of an epoch over an IterableDataset "
                f"({type(loader.dataset).__name__}): the loader cannot save the position of a stream it does not "
                f"draw itself, so the epoch's stream starts again from its beginning."
            )
            return False
        return True

    def _continue(self, resume: dict[str, Any]) -> None:
        """Rebuild the interrupted epoch's iterator from its saved random state and replay its first batches."""
        loader = self._loader
        self._rng = resume["rng"]
        self._generator_states = resume["generators"]
        # Inside isolate_rng: the process's random state after the replay is the one the checkpoint restored
        # (SeedEverything), not the one drawing the epoch's order and the replayed batches left.
        with isolate_rng():
            set_rng_states(resume["rng"])
            _set_generator_states(loader._generators(), resume["generators"])
            iterator = DataLoader.__iter__(loader)
            for _ in range(resume["yielded"]):
                next(iterator)
        self._iterator = iterator
        self.yielded = resume["yielded"]


def _length(loader: DataLoader) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an IterableDataset without __len__
        return None


def _set_generator_states(generators: list[torch.Generator], states: list[torch.Tensor]) -> None:
    # Matched by position: the same loader arguments give the same generators in the same order.
    if len(generators) != len(states):
        rank_zero_warn(
            f"ResumableDataLoader: the checkpoint holds the states of {len(states)} generators but the loader "
            f"draws from {len(generators)} (`generator=` arguments changed?); they keep their current states."
        )
        return
    for generator, state in zip(generators, states, strict=True):
        generator.set_state(state)
