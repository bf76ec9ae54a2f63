"""lightning-tricks from plain Python: your own LightningModule and loaders, the recipe's callbacks, a Trainer.

No Hydra, no account. The model below is written the way Lightning's docs write one: the loss is computed
inline in ``training_step``, the data are plain ``DataLoader``s handed to ``trainer.fit(model, train_dl,
val_dl)``, and nothing in it knows about lightning-tricks. The callbacks are those of the CLI's default
recipe (``conf/recipe/default.yaml``): seeding, the output bias set from the data, the preflight checks
(which warn and train on), the exact validation loss, the first batch as the model sees it, predictions
on fixed samples, and checkpoints.

Run it::

    python examples/python_api.py --max-epochs 5 --out outputs/python_api

It prints each check's verdict, then the media written (a CSV logger: pictures and tables land as files
under ``<out>/csv/media/``); the last line is ``val_acc=<float>``.
"""

from __future__ import annotations

import argparse
import logging

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks import (
    FullDatasetLoss,
    GradientDependencyProbe,
    InitLossCheck,
    InputIndependentBaseline,
    LastLayerBiasInit,
    OverfitBatchCheck,
    PredictionDynamics,
    SeedEverything,
    ShuffleCheck,
    TrainingHealthCheck,
    VisualizeBatch,
)

SEED = 0


class DigitClassifier(pl.LightningModule):
    """A small MLP for 8x8 digit images: the user's own model, not one of ours."""

    # lr 3e-3 rather than the recipe's 3e-4: a model this small learns digits in two epochs at it.
    def __init__(self, hidden: int = 64, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()  # in checkpoints: DigitClassifier.load_from_checkpoint(path) rebuilds it
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)  # inline: the callbacks run this step to get the loss
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def digits_loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's digits (shipped inside scikit-learn), standardised, 85/15 split by a fixed seed."""
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
    n_val = len(x) * 15 // 100
    val, train = order[:n_val], order[n_val:]
    return (
        DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(x[val], y[val]), batch_size=batch_size),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--out", default="outputs/python_api", help="output directory (logs, media, checkpoints)")
    args = parser.parse_args()
    out = args.out
    # The checks' verdicts are log records of the `lightning_tricks` loggers: show the passes too.
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # Seed *before* building anything random: the model's initial weights are drawn in its constructor,
    # long before any callback runs. SeedEverything below re-seeds at fit time with the same seed.
    pl.seed_everything(SEED, workers=True, verbose=False)
    train_dl, val_dl = digits_loaders()
    model = DigitClassifier()

    checks = [  # recipe section 2, at fit start, before the first step; "warn": report and train on
        InitLossCheck(on_failure="warn"),  # the loss at init is ln(10), or the prior's entropy after the bias init
        GradientDependencyProbe(on_failure="warn"),  # no sample's output depends on another sample
        OverfitBatchCheck(on_failure="warn"),  # a copy of the model can drive one batch's loss to ~0
        InputIndependentBaseline(on_failure="warn"),  # real inputs beat zeroed inputs
        ShuffleCheck(on_failure="warn"),  # the training loader shuffles
        TrainingHealthCheck(on_failure="warn"),  # the first steps' loss neither explodes nor turns NaN
    ]
    # The best epoch by validation loss, and last.ckpt (the latest epoch, to resume from): a second
    # checkpoint callback that monitors nothing, because Lightning 2.6's `save_last=True` rewrites that
    # file only when it saves a new best.
    best = ModelCheckpoint(dirpath=f"{out}/checkpoints", monitor="val/loss", mode="min")
    last = ModelCheckpoint(dirpath=f"{out}/checkpoints", filename="last", enable_version_counter=False)
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        default_root_dir=out,
        logger=CSVLogger(out, name="csv", version=""),  # no account, no server: media land as files
        log_every_n_steps=10,  # digits has ~24 training batches per epoch
        callbacks=[
            # RNG of Python/NumPy/torch/workers seeded at fit time and saved in every checkpoint, so
            # `trainer.fit(..., ckpt_path=...)` resumes exactly where the run stopped.
            SeedEverything(seed=SEED),
            LastLayerBiasInit(),  # the output bias = log class priors: no hockey stick at the start
            *checks,
            FullDatasetLoss(splits=["val"]),  # tricks/full_loss/val: sum of the losses / samples, exact
            VisualizeBatch(),  # the first training batch exactly as the model receives it
            PredictionDynamics(num_samples=16),  # 16 fixed validation samples, one growing table
            best,
            last,
        ],
        enable_progress_bar=False,  # keeps the output short; the last line is the result
        enable_model_summary=False,
    )
    trainer.fit(model, train_dl, val_dl)

    failed = [check.name for check in checks if check.result is not None and not check.result.passed]
    print(f"checks: {len(checks) - len(failed)} of {len(checks)} passed" + (f", failed: {failed}" if failed else ""))
    print(f"media: {out}/csv/media/  checkpoints: {out}/checkpoints/")
    # Evaluate the best checkpoint (not just the last weights) on the validation set.
    (metrics,) = trainer.validate(model, val_dl, ckpt_path=best.best_model_path, verbose=False)
    print(f"val_acc={metrics['val/acc']:.4f}")


if __name__ == "__main__":
    main()
