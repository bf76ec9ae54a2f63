"""The recipe on a CUDA device: run by ``benchmarks/run_gpu.sh`` where a GPU is lent; skipped elsewhere.

Every callback of the styles matrix on the inline-loss module, under ``32-true``, ``bf16-mixed`` and
``bf16-true``; a single-GPU DDP strategy; pinned-memory loaders. CI has no GPU: nothing depends on these.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_tricks import SeedEverything

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/run_gpu.sh)"),
]


def gpu_fit(callbacks: list, precision: str = "32-true", strategy: str = "auto", pin: bool = False) -> Any:
    from test_user_styles import InlineLoss, loaders

    pl.seed_everything(0, verbose=False)
    train, val = loaders("fit_loaders")
    if pin:
        train = DataLoader(train.dataset, batch_size=32, shuffle=True, pin_memory=True, num_workers=2)
        val = DataLoader(val.dataset, batch_size=24, pin_memory=True, num_workers=2)
    model = InlineLoss()
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        strategy=strategy,
        precision=precision,
        max_epochs=2,
        limit_train_batches=3,
        callbacks=[SeedEverything(0), *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train, val)
    return model


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_every_callback_on_cuda(precision: str, tmp_path: Any, monkeypatch: Any) -> None:
    from test_user_styles import CALLBACKS

    monkeypatch.chdir(tmp_path)
    callbacks = {name: make() for name, (make, _) in CALLBACKS.items()}
    gpu_fit(list(callbacks.values()), precision=precision)
    for name, callback in callbacks.items():
        assert CALLBACKS[name][1](callback), f"{name} did not run under {precision} on CUDA"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_single_gpu_ddp_and_pinned_loaders(tmp_path: Any, monkeypatch: Any) -> None:
    from lightning_tricks import FullDatasetLoss

    monkeypatch.chdir(tmp_path)
    full = FullDatasetLoss()
    gpu_fit([full], strategy="ddp", pin=True)
    assert full.history[-1]["val_count"] == 64
