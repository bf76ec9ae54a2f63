"""One rank of a 2-node x 1-process run, as torchrun or SLURM start it (tests/test_multi_node.py).

Each node runs in its own working directory: a file that appears in node 1's folder was written by a
process that is local rank 0 but not global rank 0 -- the confusion the test looks for. Every rank
writes what it saw to ``result-<global rank>.json`` in its folder.

Usage: two_nodes.py <folder> [<epochs> [<checkpoint to resume from>]]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

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


def run_id(out: str) -> str:
    """One W&B id per test run (its folder above the nodes'), the same for a resume of it: ids in use elsewhere
    on the machine (another test run at the same time) are refused by W&B."""
    return "twonodes" + hashlib.sha1(str(Path(out).resolve().parent).encode()).hexdigest()[:8]


def main(out: str, epochs: int = 2, ckpt_path: str | None = None) -> None:
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
        max_epochs=epochs,
        callbacks=[
            SeedEverything(0),
            LastLayerBiasInit(),
            *checks,
            full,
            inspection,
            tta,
            ModelCheckpoint(dirpath="checkpoints", save_last=True),
        ],
        # W&B offline: one run, created by global rank 0 only (a resume continues it: same id).
        logger=[
            CSVLogger("logs", name="", version=""),
            WandbLogger(save_dir="logs", offline=True, id=run_id(out), resume="allow", project="two-nodes"),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = DigitsDataModule(seed=0)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    trainer.test(model, datamodule=datamodule, verbose=False)
    result = {
        "global_rank": trainer.global_rank,
        "local_rank": trainer.local_rank,
        "node_rank": trainer.node_rank,
        "world_size": trainer.world_size,
        # None: not run (the checks run once, before training; not again on a resume)
        "verdicts": {c.name: None if c.result is None else c.result.passed for c in checks},
        "full_loss": full.history[-1],
        "tta": None if tta.result is None else {"loss": tta.result.loss, "count": tta.result.count},
        "inspection_has_errors": None if inspection.report is None else inspection.report.has_errors,  # None: resumed
        "weights_sum": float(sum(p.double().sum() for p in model.parameters())),
    }
    with open(f"{out}/result-{trainer.global_rank}.json", "w") as f:
        json.dump(result, f, default=str)
    torch.distributed.barrier() if torch.distributed.is_initialized() else None


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) if a.isdigit() else a for a in sys.argv[2:]))
