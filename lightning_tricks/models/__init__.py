"""Reference LightningModules: small, correct, following the lightning-tricks protocol."""

from lightning_tricks.models.base import ReferenceModule
from lightning_tricks.models.cnn import CNN
from lightning_tricks.models.mlp import MLP

__all__ = ["CNN", "MLP", "ReferenceModule"]
