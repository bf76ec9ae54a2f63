"""Recipe 4 — ActivationStats: dead ReLUs and saturated tanh found, hooks only on sampled steps, always removed."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_tricks import ActivationStats
from lightning_tricks.callbacks.activation_stats import activation_summary
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP
from lightning_tricks.testing import run_ddp


class Planted(MLP):
    """Layer 1's ReLU is dead (bias -100); a tanh after it saturates (weights x 100)."""

    def __init__(self) -> None:
        super().__init__(input_shape=(1, 8, 8), num_outputs=10, hidden_sizes=[32, 32])
        self.net[4] = nn.Tanh()
        with torch.no_grad():
            self.net[1].bias.fill_(-100.0)
            self.net[3].weight.mul_(100.0)
            self.net[3].bias.fill_(5.0)


class CountHooks(Callback):
    def __init__(self) -> None:
        self.during: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.during.append(sum(len(m._forward_hooks) for m in pl_module.modules()))


def fit(tmp_path: Path, model, callbacks, epochs: int = 1, ckpt_path=None) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=6, limit_val_batches=0, callbacks=callbacks,
                         logger=CSVLogger(tmp_path, name="csv", version=""), enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule(), ckpt_path=ckpt_path)
    return trainer


def test_summary_closed_forms() -> None:
    relu_out = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]])  # unit 0 never fires
    assert activation_summary(nn.ReLU(), relu_out)["dead"] == pytest.approx(1 / 3)
    tanh_out = torch.tensor([[0.999, -0.995], [0.5, 0.0]])
    assert activation_summary(nn.Tanh(), tanh_out)["saturated"] == pytest.approx(0.5)
    assert activation_summary(nn.Linear(2, 2), relu_out)["mean"] == pytest.approx(1.0)


def test_planted_dead_and_saturated_layers_are_found_clean_ones_are_not(tmp_path: Path) -> None:
    stats = ActivationStats(every_n_steps=2)
    fit(tmp_path / "planted", Planted(), [stats])
    first = {r["layer"]: r for r in stats.history if r["step"] == 0}
    assert first["net.2"]["dead"] == 1.0 and first["net.4"]["saturated"] > 0.9
    clean = ActivationStats(every_n_steps=2)
    fit(tmp_path / "clean", MLP(input_shape=(1, 8, 8), num_outputs=10, hidden_sizes=[32, 32]), [clean])
    assert all(r.get("dead", 0) < 0.5 for r in clean.history)


def test_hooks_live_only_on_sampled_steps_and_are_removed(tmp_path: Path) -> None:
    stats, counter = ActivationStats(every_n_steps=3), CountHooks()
    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    fit(tmp_path, model, [stats, counter])
    assert counter.during == [5, 0, 0, 5, 0, 0]  # 3 Linear + 2 ReLU, hooked at steps 0 and 3 only
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert sorted({r["step"] for r in stats.history}) == [0, 3]
    media = tmp_path / "csv" / "media"
    assert [p.name for p in media.iterdir()] == ["tricks_activations_heatmap_step6.png"]
    assert "tricks/activations/net.2/dead" in (tmp_path / "csv" / "metrics.csv").read_text()


def test_history_survives_resume_and_bad_arguments_are_named(tmp_path: Path) -> None:
    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    first = ActivationStats(every_n_steps=3)
    fit(tmp_path / "a", model, [first, ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    resumed = ActivationStats(every_n_steps=3)
    fit(tmp_path / "b", model, [resumed], epochs=2, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.history[: len(first.history)] == first.history
    assert sorted({r["step"] for r in resumed.history}) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match=r"`every_n_steps` must be an integer >= 1, got 0"):
        ActivationStats(every_n_steps=0)


def stats_on_ranks(root: str, devices: int) -> dict:
    pl.seed_everything(0, verbose=False)
    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    stats = ActivationStats(every_n_steps=2)
    pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp", max_epochs=1, limit_train_batches=4,
               limit_val_batches=0, callbacks=[stats], logger=CSVLogger(root, name="csv", version=""),
               enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False).fit(
        model, datamodule=DigitsDataModule()
    )  # fmt: skip
    return {"steps": sorted({r["step"] for r in stats.history}),
            "hooks": sum(len(m._forward_hooks) for m in model.modules())}  # fmt: skip


@pytest.mark.slow
@pytest.mark.ddp
def test_under_ddp_every_rank_hooks_and_cleans_up(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp(stats_on_ranks, str(tmp_path), devices=2, timeout=180)
    assert rank0 == rank1 == {"steps": [0, 2], "hooks": 0}
    assert [p.name for p in (tmp_path / "csv" / "media").iterdir()] == ["tricks_activations_heatmap_step4.png"]
