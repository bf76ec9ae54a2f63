"""One rank of a 2-node x 1-process run, as torchrun or SLURM start it (tests/test_multi_node.py).

Each node runs in its own working directory: a file that appears in node 1's folder was written by a
process that is local rank 0 but not global rank 0 -- the confusion the test looks for. Every rank
writes what it saw to ``result-<global rank>.json`` in its folder.
"""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_tricks import (
    DataInspection,
    FullDatasetLoss,
    GradientDependencyProbe,
    InitLossCheck,
    InputIndependentBaseline,
    LastLayerBiasInit,
    OverfitBatchCheck,
    SeedEverything,
    ShuffleCheck,
    TestTimeAugmentation,
)
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP


def main(out: str) -> None:
    pl.seed_everything(0, verbose=False)
    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    checks = [
        InitLossCheck(on_failure="warn"),
        GradientDependencyProbe(on_failure="warn"),
        OverfitBatchCheck(on_failure="warn"),
        InputIndependentBaseline(on_failure="warn"),
        ShuffleCheck(on_failure="warn"),
    ]
    full, inspection, tta = FullDatasetLoss(splits=["val", "test"]), DataInspection(top_k=8), TestTimeAugmentation()
    trainer = pl.Trainer(
        accelerator="cpu",
        num_nodes=2,
        devices=1,
        strategy="ddp",
        max_epochs=2,
        callbacks=[
            SeedEverything(0),
            LastLayerBiasInit(),
            *checks,
            full,
            inspection,
            tta,
            ModelCheckpoint(dirpath="checkpoints", save_last=True),
        ],
        logger=CSVLogger("logs", name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = DigitsDataModule(seed=0)
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    result = {
        "global_rank": trainer.global_rank,
        "local_rank": trainer.local_rank,
        "node_rank": trainer.node_rank,
        "world_size": trainer.world_size,
        "verdicts": {c.name: c.result.passed for c in checks},
        "full_loss": full.history[-1],
        "tta": None if tta.result is None else {"loss": tta.result.loss, "count": tta.result.count},
        "inspection_has_errors": inspection.report.has_errors,
        "weights_sum": float(sum(p.double().sum() for p in model.parameters())),
    }
    with open(f"{out}/result-{trainer.global_rank}.json", "w") as f:
        json.dump(result, f, default=str)
    torch.distributed.barrier() if torch.distributed.is_initialized() else None


if __name__ == "__main__":
    main(sys.argv[1])
