"""Recipe 2.1: fix the random seed, so two runs give the same result — and a resumed run too.

Lightning's ``seed_everything`` seeds a process once. Two things are missing
for a run to be reproducible end to end, and this callback adds them:

* **per-rank streams.** Every DDP rank seeded alike draws the same dropout
  masks and augmentations on different data; rank ``r`` gets a seed derived
  from ``(seed, r)`` (rank 0 keeps ``seed``, so a one-device run is plain
  ``seed_everything(seed)``). Loader workers get Lightning's per-rank,
  per-worker seeds (``workers=True``).
* **RNG state in checkpoints.** Lightning saves weights, optimizer and loop
  state but not the RNG, so a resumed run shuffles and drops out differently
  from an uninterrupted one. Here every rank's Python/NumPy/torch/CUDA state is
  gathered into the checkpoint and each rank gets its own back on resume.

The RNG is not the loader's position: a checkpoint written inside an epoch resumes exactly only
with a training loader that keeps its position (:class:`~lightning_tricks.ResumableDataLoader`,
which the suite's data modules use). A plain ``DataLoader`` cannot be given one from here
(Lightning gives callbacks no hold on the loader it iterates), so on such a resume this callback
warns, naming the loader and the fix; it warns too on a DDP resume with loader workers, which
Lightning shuffles as epoch 0 whatever the epoch (see :meth:`on_train_start`).

The model's initial weights are drawn when the model is built, before any
callback runs: seed before building it (``lightning.seed_everything(seed)``,
which ``lightning-tricks train`` does with the same ``seed``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_tricks.functional.seed import check_seed, collect_rng_states, derive_seed, rank_seed, set_rng_states


class SeedEverything(Callback):
    """Seed Python, NumPy, torch and loader workers from one seed; keep every rank's RNG state in checkpoints.

    Args:
        seed: the one seed, an integer in ``[0, 2**32 - 1]``.
        workers: give every dataloader worker its own seed derived from the
            seed, the rank and the worker id (Lightning's ``pl_worker_init_function``).
        deterministic: ``True`` makes torch use deterministic algorithms (and
            raise on ops that have none); ``"warn"`` only warns on those ops.
            The previous setting is restored at teardown.
        log_hyperparams: record ``seed`` in the loggers' hyper-parameters.

    A Trainer holds one (its checkpoint key is the class name): a process has one global RNG, so a
    second instance would overwrite the first one's seeds and restored states; Lightning refuses it.

    Example::

        trainer = Trainer(callbacks=[SeedEverything(seed=0)], max_epochs=4)
        trainer.fit(model, datamodule=dm)  # and trainer.fit(..., ckpt_path="last.ckpt") resumes exactly
    """

    def __init__(
        self,
        seed: int = 42,
        workers: bool = True,
        deterministic: bool | Literal["warn"] = False,
        log_hyperparams: bool = True,
    ) -> None:
        if deterministic not in (True, False, "warn"):
            raise ValueError(f"SeedEverything: `deterministic` must be True, False or 'warn', got {deterministic!r}.")
        for name, value in (("workers", workers), ("log_hyperparams", log_hyperparams)):
            if not isinstance(value, bool):
                raise ValueError(f"SeedEverything: `{name}` must be True or False, got {value!r}.")
        self.seed = check_seed(seed, "seed")
        self.workers = workers
        self.deterministic = deterministic
        self.log_hyperparams = log_hyperparams
        self._trainer: pl.Trainer | None = None
        self._previous_determinism: tuple[bool, bool] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._seed_rank(trainer.global_rank)
        if stage == "fit":
            per_rank = " (rank r > 0 draws from a stream derived from (seed, r))" if trainer.world_size > 1 else ""
            rank_zero_info(f"SeedEverything: seed {self.seed}{per_rank}.")
        if self.deterministic:
            self._previous_determinism = (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            )
            # cuBLAS needs a fixed workspace to be deterministic on CUDA >= 10.2.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=self.deterministic == "warn")
        if self.log_hyperparams:
            for logger in trainer.loggers:
                logger.log_hyperparams({"seed": self.seed})

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        loaders = trainer.train_dataloader
        loaders = list(loaders.values()) if isinstance(loaders, Mapping) else loaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        stateless = [dl for dl in loaders if not _keeps_position(dl)]
        if not stateless:
            return
        name = type(stateless[0]).__name__
        # Lightning's own test for a checkpoint written inside an epoch (TrainingEpochLoop.reset).
        batches = trainer.num_training_batches
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if batches != float("inf") else 0
        if steps_per_epoch and trainer.global_step % steps_per_epoch != 0:
            rank_zero_warn(
                f"SeedEverything: resuming from a checkpoint written inside an epoch (step {trainer.global_step}), "
                f"but the training {name} keeps no position: the rest of the epoch is drawn in a new order, so "
                f"this run will not equal an uninterrupted one although the RNG is restored. Use "
                f"lightning_tricks.ResumableDataLoader (a drop-in DataLoader) or resume from an end-of-epoch "
                f"checkpoint."
            )
        elif trainer.world_size > 1 and any(getattr(dl, "num_workers", 0) > 0 for dl in stateless):
            rank_zero_warn(
                f"SeedEverything: resuming on {trainer.world_size} processes with a {name} with workers: Lightning "
                f"builds the first resumed epoch's iterator before it sets the DistributedSampler's epoch, and with "
                f"workers the iterator draws its order at once, so that epoch is shuffled as epoch 0 was and the run "
                f"will not equal an uninterrupted one. Use lightning_tricks.ResumableDataLoader (a drop-in DataLoader)."
            )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_determinism is not None:
            enabled, warn_only = self._previous_determinism
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
            self._previous_determinism = None

    @override
    def state_dict(self) -> dict[str, Any]:
        states = collect_rng_states()
        gathered = [states]
        trainer = self._trainer
        # Checkpoints are written by rank 0, but every rank has its own RNG state: gather them.
        # Lightning calls state_dict on every rank when saving (save_checkpoint is collective).
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, states)
        return {"seed": self.seed, "rng_states": gathered}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("seed") != self.seed:
            rank_zero_warn(
                f"SeedEverything: resuming a run seeded with {state_dict.get('seed')} while `seed` is "
                f"{self.seed}; the checkpoint's RNG states are restored."
            )
        # Applied at once. Lightning restores callback state after `setup` (which seeds) and before the
        # sanity check (which runs inside `isolate_rng`) and before the training loader's first `iter()`,
        # so the loader draws its seeds from exactly the state the interrupted run had when it saved.
        states = state_dict["rng_states"]
        rank, world_size = self._rank_and_world_size()
        if len(states) == world_size:
            set_rng_states(states[rank])
            return
        rank_zero_warn(
            f"SeedEverything: the checkpoint holds RNG states of {len(states)} processes but this run has "
            f"{world_size}; reseeding each rank from (seed, rank, number of saved ranks) instead, so the resumed "
            f"run is reproducible but not identical to an uninterrupted one."
        )
        self._seed_rank(rank, derive_seed(self.seed, rank, len(states)))

    def _seed_rank(self, rank: int, local_seed: int | None = None) -> None:
        """Seed this process's stream; keep PL_GLOBAL_SEED (the DistributedSampler's shuffle seed) shared."""
        local_seed = rank_seed(self.seed, rank) if local_seed is None else local_seed
        # Lightning's function; `workers` sets PL_SEED_WORKERS, so loaders get per-rank, per-worker seeds.
        seed_everything(local_seed, workers=self.workers, verbose=False)
        # Every rank must shuffle with the same permutation for the DistributedSampler to shard the data.
        os.environ["PL_GLOBAL_SEED"] = str(self.seed)

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self._trainer is not None:
            return self._trainer.global_rank, self._trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1


def _keeps_position(loader: object) -> bool:
    """Whether Lightning saves the loader's position in checkpoints (its ``_Stateful`` test, duck-typed)."""
    return callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))
