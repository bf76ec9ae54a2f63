"""The recipe's tricks as Lightning callbacks, one trick per module."""

from lightning_tricks.callbacks.seed_everything import SeedEverything

__all__ = ["SeedEverything"]
