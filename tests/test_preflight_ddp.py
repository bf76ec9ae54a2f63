"""Every check under 2-process DDP (gloo): no hang, and both ranks reach the same verdict as one process."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from zoo import BUGS, digits_mlp

from lightning_tricks import TrainingHealthCheck, run_preflight
from lightning_tricks.models import MLP

CASES = [
    "view_instead_of_transpose",
    "softmax_before_cross_entropy",
    "last_layer_100x",
    "labels_shifted",
    "sorted_unshuffled_loader",
]


def preflight_verdicts(devices: int) -> dict:
    """Run preflight on a clean model and on bugs that each fail a different check; plus the health check."""
    verdicts = {}
    builds = {"clean": digits_mlp, **{name: BUGS[name][0] for name in CASES}}
    for name, build in builds.items():
        pl.seed_everything(0, verbose=False)
        model, dm = build()
        report = run_preflight(model, dm, devices=devices, strategy="ddp" if devices > 1 else "auto")
        verdicts[name] = {r.name: r.passed for r in report.results}
    pl.seed_everything(0, verbose=False)
    health = TrainingHealthCheck(window=10, on_failure="ignore")
    model, dm = MLP(input_shape=(1, 8, 8), num_outputs=10, optimizer=partial(torch.optim.SGD, lr=50.0)), digits_mlp()[1]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=1,
        limit_val_batches=0,
        callbacks=[health],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    verdicts["training_health_diverging"] = health.result.passed
    return verdicts


@pytest.mark.slow
@pytest.mark.ddp
def test_every_check_gives_the_same_verdict_on_both_ranks_as_on_one_process() -> None:
    from lightning_tricks.testing import run_ddp

    rank0, rank1 = run_ddp(preflight_verdicts, devices=2, timeout=300)
    assert rank0 == rank1
    assert all(rank0["clean"].values()), rank0["clean"]
    for name in CASES:
        assert rank0[name][BUGS[name][1]] is False, (name, rank0[name])
    assert rank0["training_health_diverging"] is False
    # the distributed verdicts are those of a single process (the checks share rank 0's batches)
    single = preflight_verdicts(devices=1)
    assert {k: v for k, v in single.items() if k != "training_health_diverging"} == {
        k: v for k, v in rank0.items() if k != "training_health_diverging"
    }
