"""lightning-tricks: Karpathy's recipe for training neural networks as PyTorch Lightning callbacks."""

from lightning_tricks.callbacks import SeedEverything
from lightning_tricks.media import log_image, log_scalars, log_table
from lightning_tricks.protocol import AdapterError, ModelAdapter, TrickModule

__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "ModelAdapter",
    "SeedEverything",
    "TrickModule",
    "__version__",
    "log_image",
    "log_scalars",
    "log_table",
]
