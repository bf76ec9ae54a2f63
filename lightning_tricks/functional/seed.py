"""Seeds derived from one seed, and the RNG states a run must carry across a resume."""

from __future__ import annotations

import operator
import random
from typing import Any

import numpy as np
import torch

from lightning_tricks.utilities.arguments import UsageError

MAX_SEED = 2**32 - 1


def check_seed(seed: object, argument: str = "seed") -> int:
    """``seed`` as an int if it is an integer in ``[0, 2**32 - 1]`` (NumPy integers too), else a ``UsageError``.

    >>> check_seed(np.int64(7))
    7
    """
    try:
        value = operator.index(seed) if not isinstance(seed, bool) else None
    except TypeError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise UsageError(f"`{argument}` must be an integer in [0, {MAX_SEED}], got {seed!r}.")
    return value


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed derived from ``seed`` and ``keys`` (rank, worker, ...).

    NumPy's ``SeedSequence`` hashes the keys, so seeds of neighbouring ranks
    are unrelated streams rather than ``seed + 1``, which would make rank 1 of
    seed 0 replay rank 0 of seed 1. Without keys the seed is returned as is.

    >>> derive_seed(7)
    7
    >>> derive_seed(7, 1) == derive_seed(7, 1) != derive_seed(7, 2)
    True
    """
    if not keys:
        return seed
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``: rank 0 keeps ``seed`` (a 1-device run is unchanged), others derive one.

    >>> rank_seed(42, 0), rank_seed(42, 1) != 42
    (42, True)
    """
    return seed if rank == 0 else derive_seed(seed, rank)


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch (CPU) and CUDA (when initialised)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    # Stored as tensors and plain numbers only, so checkpoints still load with torch.load(weights_only=True).
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore states from :func:`collect_rng_states`."""
    random.setstate(states["python"])
    npy = states["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
