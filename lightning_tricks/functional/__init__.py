"""The math of each trick as pure functions: no Trainer, testable on their own."""

from lightning_tricks.functional.images import figure_to_array, make_grid, to_uint8_image
from lightning_tricks.functional.seed import collect_rng_states, derive_seed, rank_seed, set_rng_states

__all__ = [
    "collect_rng_states",
    "derive_seed",
    "figure_to_array",
    "make_grid",
    "rank_seed",
    "set_rng_states",
    "to_uint8_image",
]
