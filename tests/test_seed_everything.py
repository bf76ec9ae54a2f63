"""Recipe 2.1 — SeedEverything: same seed, same weights; a resumed run equals an uninterrupted one, on 1 and 2 ranks."""

from __future__ import annotations

import io
import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_tricks import SeedEverything
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.functional.seed import collect_rng_states, derive_seed, rank_seed, set_rng_states
from lightning_tricks.models import MLP


def fit_digits(
    root: str,
    max_epochs: int,
    seed: int = 0,
    ckpt_path: str | None = None,
    use_callback: bool = True,
    num_workers: int = 0,
) -> dict:
    """A small MLP with dropout and shuffling on digits; returns the final weights."""
    pl.seed_everything(seed, verbose=False)  # the model's init is drawn here, before any callback runs
    dm = DigitsDataModule(seed=seed, batch_size=32, num_workers=num_workers)
    model = MLP(input_shape=dm.input_shape, num_outputs=10, hidden_sizes=[32], dropout=0.3)
    callbacks = [ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)]
    if use_callback:
        callbacks.insert(0, SeedEverything(seed))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy()
    return {"weights": weights}


# --- functional -------------------------------------------------------------------------------


def test_derived_seeds_are_distinct_deterministic_and_rank0_keeps_the_seed() -> None:
    assert rank_seed(123, 0) == 123
    seeds = {rank_seed(123, r) for r in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**32 for s in seeds)
    assert derive_seed(5, 1, 2) == derive_seed(5, 1, 2) != derive_seed(5, 2, 1)
    # seed+rank would make (seed 0, rank 1) replay (seed 1, rank 0); hashing does not.
    assert rank_seed(0, 1) != rank_seed(1, 0)


def test_rng_states_round_trip_and_load_with_weights_only() -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    buffer = io.BytesIO()
    torch.save(collect_rng_states(), buffer)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    buffer.seek(0)
    set_rng_states(torch.load(buffer, weights_only=True))  # what torch>=2.6 does with checkpoints
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


# --- constructor ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "0", True])
def test_bad_seed_is_refused_with_the_range(seed) -> None:
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 4294967295\]"):
        SeedEverything(seed=seed)


def test_numpy_integer_seeds_are_accepted_and_flags_must_be_booleans() -> None:
    assert SeedEverything(seed=np.int64(3)).seed == 3
    with pytest.raises(ValueError, match="`workers` must be True or False, got 'false'"):
        SeedEverything(workers="false")


def test_bad_deterministic_is_refused() -> None:
    with pytest.raises(ValueError, match="`deterministic` must be True, False or 'warn', got 'yes'"):
        SeedEverything(deterministic="yes")


# --- single process ---------------------------------------------------------------------------


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    a = fit_digits(str(tmp_path / "a"), 2, seed=0)["weights"]
    b = fit_digits(str(tmp_path / "b"), 2, seed=0)["weights"]
    c = fit_digits(str(tmp_path / "c"), 2, seed=1)["weights"]
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path: Path) -> None:
    full = fit_digits(str(tmp_path / "full"), 4)["weights"]
    half = fit_digits(str(tmp_path / "resumed"), 2)["weights"]
    resumed = fit_digits(str(tmp_path / "resumed"), 4, ckpt_path=str(tmp_path / "resumed" / "last.ckpt"))["weights"]
    assert not np.array_equal(half, full)  # the last 2 epochs did change the weights
    assert np.array_equal(resumed, full)


def test_without_the_callback_a_resumed_run_diverges(tmp_path: Path) -> None:
    """The planted bug: Lightning alone does not restore RNG state, so shuffling/dropout differ after resume."""
    full = fit_digits(str(tmp_path / "full"), 4, use_callback=False)["weights"]
    fit_digits(str(tmp_path / "resumed"), 2, use_callback=False)
    resumed = fit_digits(
        str(tmp_path / "resumed"), 4, ckpt_path=str(tmp_path / "resumed" / "last.ckpt"), use_callback=False
    )["weights"]
    assert not np.array_equal(resumed, full)


@pytest.mark.slow
def test_resume_is_exact_with_loader_workers(tmp_path: Path) -> None:
    full = fit_digits(str(tmp_path / "full"), 3, num_workers=2)["weights"]
    fit_digits(str(tmp_path / "resumed"), 1, num_workers=2)
    resumed = fit_digits(str(tmp_path / "resumed"), 3, ckpt_path=str(tmp_path / "resumed" / "last.ckpt"), num_workers=2)
    assert np.array_equal(resumed["weights"], full)


def test_checkpoint_holds_the_rng_state_and_loads_weights_only(tmp_path: Path) -> None:
    fit_digits(str(tmp_path), 1)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "SeedEverything" in k]
    assert state["seed"] == 0 and len(state["rng_states"]) == 1
    assert set(state["rng_states"][0]) >= {"python", "numpy", "torch"}


@pytest.mark.parametrize("mode", [True, "warn"])
def test_deterministic_mode_is_on_during_fit_and_restored_after(tmp_path: Path, mode) -> None:
    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen["during"] = torch.are_deterministic_algorithms_enabled()
            seen["warn_only"] = torch.is_deterministic_algorithms_warn_only_enabled()

    before = torch.are_deterministic_algorithms_enabled()
    dm = DigitsDataModule(seed=0)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[SeedEverything(0, deterministic=mode), Probe()],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(MLP(input_shape=dm.input_shape, num_outputs=10), datamodule=dm)
    assert seen["during"] is True and seen["warn_only"] is (mode == "warn")
    assert torch.are_deterministic_algorithms_enabled() is before


def test_seed_is_logged_to_the_loggers_hyperparameters(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    dm = DigitsDataModule(seed=0)
    logger = CSVLogger(tmp_path, name="csv", version="")
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[SeedEverything(1234)],
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(MLP(input_shape=dm.input_shape, num_outputs=10), datamodule=dm)
    assert "seed: 1234" in (Path(logger.log_dir) / "hparams.yaml").read_text()


# The 2-process resume (every rank's weights, RNG streams and loader position) is tested in
# tests/test_resume_exact.py, with the 1-process resume of a 2-rank checkpoint.
