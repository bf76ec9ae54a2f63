"""lightning-tricks from plain Python: your own LightningModule, our callback, Lightning's Trainer.

No Hydra, no account: the model below is an ordinary ``LightningModule`` that
knows nothing about lightning-tricks. It only follows the conventions the
callbacks rely on (see ``lightning_tricks.utilities.protocol``): batches are
``(inputs, targets)`` tuples, the loss is a ``criterion`` attribute, and the
last layer is an ``nn.Linear``.

Run it::

    python examples/python_api.py --max-epochs 5 --out outputs/python_api

The last line printed is ``val_acc=<float>``.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_tricks import SeedEverything
from lightning_tricks.data import DigitsDataModule

SEED = 0


class DigitClassifier(pl.LightningModule):
    """A small MLP for 8x8 digit images: the user's own model, not one of ours."""

    # lr 3e-3 rather than the recipe's 3e-4: a model this small learns digits in two epochs at it.
    def __init__(self, hidden: int = 64, lr: float = 3e-3) -> None:
        super().__init__()
        # Stored in checkpoints, so DigitClassifier.load_from_checkpoint(path) rebuilds the model.
        self.save_hyperparameters()
        # The last layer with parameters is an nn.Linear: callbacks that touch the output layer find it.
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        # A `criterion` attribute is where callbacks look for the loss (and infer the task: multiclass).
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch  # tuple batches: callbacks split them the same way
        loss = self.criterion(self(inputs), targets)
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self(inputs)
        self.log("val/loss", self.criterion(logits, targets))
        self.log("val/acc", (logits.argmax(-1) == targets).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--out", default="outputs/python_api", help="output directory (logs, checkpoints)")
    args = parser.parse_args()
    out = args.out

    # Seed *before* building anything random: the model's initial weights are drawn in its constructor,
    # long before any callback runs. SeedEverything below re-seeds at fit time with the same seed.
    pl.seed_everything(SEED, workers=True)
    datamodule = DigitsDataModule(batch_size=64, seed=SEED)  # `seed` picks the train/val/test split
    model = DigitClassifier()
    # Lightning's own callback: keep the best model by validation loss.
    best = ModelCheckpoint(dirpath=f"{out}/checkpoints", monitor="val/loss", mode="min")
    # And last.ckpt, the latest epoch, to resume from: a second one that monitors nothing. Not
    # `save_last=True` above: Lightning 2.6 rewrites that file only when it saves a new best.
    last = ModelCheckpoint(dirpath=f"{out}/checkpoints", filename="last", enable_version_counter=False)

    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        default_root_dir=out,
        logger=CSVLogger(out),  # metrics in a CSV file under `out`: no account, no server
        log_every_n_steps=10,  # digits has ~20 training batches per epoch
        callbacks=[
            # Seeds Python/NumPy/torch/loader workers at fit time and stores the RNG state in every
            # checkpoint, so `trainer.fit(..., ckpt_path=...)` resumes exactly where the run stopped.
            SeedEverything(seed=SEED),
            best,
            last,
        ],
        enable_progress_bar=False,  # keeps the output short; the last line is the result
    )
    trainer.fit(model, datamodule=datamodule)

    # Evaluate the best checkpoint (not just the last weights) on the validation set.
    (metrics,) = trainer.validate(model, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)
    print(f"val_acc={metrics['val/acc']:.4f}")


if __name__ == "__main__":
    main()
