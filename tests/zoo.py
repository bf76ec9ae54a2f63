"""The bug zoo: small models and data with planted bugs, and clean references, for the preflight checks.

Each bug is a mistake people make (see the recipe, section 2) and names the check that must catch it.
"""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks.data import DigitsDataModule, SyntheticRegressionDataModule
from lightning_tricks.models import MLP, ReferenceModule

# --- clean references -------------------------------------------------------------------------


def digits_mlp() -> tuple[pl.LightningModule, pl.LightningDataModule]:
    dm = DigitsDataModule(seed=0)
    return MLP(input_shape=dm.input_shape, num_outputs=10), dm


class BatchNormCNN(ReferenceModule):
    """Conv + BatchNorm + Dropout2d: BatchNorm mixes samples in train mode, which is not a bug."""

    def __init__(self, **kwargs) -> None:
        super().__init__(input_shape=(1, 8, 8), num_outputs=10, **kwargs)
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.1),
            nn.Linear(32, 10),
        )


def batchnorm_cnn() -> tuple[pl.LightningModule, pl.LightningDataModule]:
    return BatchNormCNN(optimizer=partial(torch.optim.Adam, lr=1e-3)), DigitsDataModule(seed=0)


class TokenDataModule(pl.LightningDataModule):
    """Integer token sequences; the label is the first token modulo 4 (learnable from the input only)."""

    def __init__(self, n: int = 512, length: int = 8, vocab: int = 16, seed: int = 0, sort_by_label: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, vocab, (n, length), generator=g)
        self.y = self.x[:, 0] % 4
        self.vocab, self.length, self.sort_by_label = vocab, length, sort_by_label

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:384], self.y[:384]), batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[384:], self.y[384:]), batch_size=64)


class TinyTransformer(pl.LightningModule):
    """Token classifier: embedding + positions, one Transformer encoder layer, mean pooling, linear head."""

    def __init__(self, vocab: int = 16, length: int = 8, d: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", self.criterion(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def token_transformer() -> tuple[pl.LightningModule, pl.LightningDataModule]:
    return TinyTransformer(), TokenDataModule()


class TinyCausalLM(TinyTransformer):
    """Next-token model: output (B, T, vocab). With `causal=False` attention sees the future (the bug)."""

    def __init__(self, causal: bool = True) -> None:
        super().__init__(classes=16)
        self.causal = causal
        self.task = "multiclass"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length) if self.causal else None
        return self.head(self.encoder(self.embed(tokens) + self.pos[:length], mask=mask, is_causal=self.causal))

    def compute_loss(self, outputs, targets):
        return self.criterion(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def regression_mlp() -> tuple[pl.LightningModule, pl.LightningDataModule]:
    dm = SyntheticRegressionDataModule(num_samples=1000, target_mean=5.0, target_std=2.0, seed=0)
    model = MLP(
        input_shape=dm.input_shape, num_outputs=1, task="regression", optimizer=partial(torch.optim.Adam, lr=1e-2)
    )
    return model, dm


CLEAN = {
    "digits_mlp": digits_mlp,
    "batchnorm_cnn": batchnorm_cnn,
    "token_transformer": token_transformer,
    "regression_mlp": regression_mlp,
}

# --- planted bugs -----------------------------------------------------------------------------


class ViewInsteadOfTranspose(MLP):
    """Wants the features as (64, B) for a moment and back: `view` where `t()` was meant mixes samples."""

    def forward(self, x):
        flat = x.flatten(1)
        features_first = flat.view(flat.shape[1], flat.shape[0])  # BUG: should be flat.t()
        return self.net(features_first.t().reshape_as(x))


class MeanOverBatch(MLP):
    """Hand-rolled normalisation over the wrong dimension: subtracts the batch mean."""

    def forward(self, x):
        return self.net(x - x.mean(0, keepdim=True))  # BUG: dim 0 is the batch


class SoftmaxBeforeCrossEntropy(MLP):
    def forward(self, x):
        return torch.softmax(self.net(x), dim=-1)  # BUG: CrossEntropyLoss wants logits


class InputNeverReachesOutput(MLP):
    def forward(self, x):
        return self.net(torch.zeros_like(x))  # BUG: e.g. the wrong variable after a refactor


def huge_last_layer() -> MLP:
    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    with torch.no_grad():
        model.net[-1].weight.mul_(100.0)  # BUG: last layer initialised 100x too large
        model.net[-1].bias.mul_(100.0)
    return model


class ShiftedLabelsDigits(DigitsDataModule):
    def load_arrays(self):
        x, y = super().load_arrays()
        # The data as a loader of a shuffled file would give it. (scikit-learn's digits come mostly in the
        # order 0, 1, ..., 9, 0, 1, ...: shifted in that order, 30% of the labels become "the digit minus one",
        # a mapping the model can learn, and only a budget too short to learn it made the baseline fail.)
        order = np.random.default_rng(0).permutation(len(y))
        x, y = x[order], y[order]
        return x, np.roll(y, 1)  # BUG: labels off by one sample


class SortedUnshuffledDigits(DigitsDataModule):
    def train_dataloader(self):
        x, y = self.datasets["train"].tensors
        order = torch.argsort(y, stable=True)  # BUG: sorted by class, and never shuffled
        return DataLoader(TensorDataset(x[order], y[order]), batch_size=self.batch_size, shuffle=False)


class NaNInputsDigits(DigitsDataModule):
    def load_arrays(self):
        x, y = super().load_arrays()
        x[::7, 0, 0, 0] = np.nan  # BUG: missing values that preprocessing let through
        return x, y


def _mlp(cls=MLP, **kwargs) -> MLP:
    return cls(input_shape=(1, 8, 8), num_outputs=10, **kwargs)


#: name -> (build model and data, the check that must catch it)
BUGS = {
    "view_instead_of_transpose": (
        lambda: (_mlp(ViewInsteadOfTranspose), DigitsDataModule(seed=0)),
        "gradient_dependency",
    ),
    "mean_over_batch": (lambda: (_mlp(MeanOverBatch), DigitsDataModule(seed=0)), "gradient_dependency"),
    "softmax_before_cross_entropy": (
        lambda: (_mlp(SoftmaxBeforeCrossEntropy), DigitsDataModule(seed=0)),
        "overfit_batch",
    ),
    "last_layer_100x": (lambda: (huge_last_layer(), DigitsDataModule(seed=0)), "init_loss"),
    "labels_shifted": (lambda: (_mlp(), ShiftedLabelsDigits(seed=0)), "input_independent_baseline"),
    "input_never_reaches_output": (
        lambda: (_mlp(InputNeverReachesOutput), DigitsDataModule(seed=0)),
        "input_independent_baseline",
    ),
    "sorted_unshuffled_loader": (lambda: (_mlp(), SortedUnshuffledDigits(seed=0)), "shuffle"),
    "learning_rate_diverges": (
        lambda: (_mlp(optimizer=partial(torch.optim.SGD, lr=50.0)), DigitsDataModule(seed=0)),
        "overfit_batch",
    ),
    "nan_inputs": (lambda: (_mlp(), NaNInputsDigits(seed=0)), "init_loss"),
}
