"""Exact resume at any step: a run resumed from a checkpoint written in the middle of an epoch ends with the
weights of the uninterrupted run, bit for bit (CPU), with loader workers and on 2 DDP processes.

The planted bug is Lightning's default: a plain ``DataLoader`` keeps no position, so the rest of the
interrupted epoch is drawn from a new permutation.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, default_collate

from lightning_tricks import ResumableDataLoader, SeedEverything
from lightning_tricks.models import MLP
from lightning_tricks.testing import run_ddp

BATCHES_PER_EPOCH = 15  # 240 training samples in batches of 16


class NoisyCollate:
    """Random augmentation in the collate function: it draws from the RNG of the process that loads the batch
    (a worker's own, with num_workers > 0), which no checkpoint holds."""

    def __call__(self, samples):
        x, y = default_collate(samples)
        return x + 0.1 * torch.randn_like(x), y


class Blobs(pl.LightningDataModule):
    """300 samples of 4 Gaussian classes; the training loader is the class under test."""

    def __init__(self, loader_class: type = ResumableDataLoader, num_workers: int = 0) -> None:
        super().__init__()
        self.loader_class = loader_class
        self.num_workers = num_workers
        generator = torch.Generator().manual_seed(123)
        y = torch.arange(300) % 4
        x = torch.randn(300, 16, generator=generator) + 2.0 * torch.nn.functional.one_hot(y, 16).float()
        self.train_set = TensorDataset(x[:240], y[:240])
        self.val_set = TensorDataset(x[240:], y[240:])

    def train_dataloader(self):
        return self.loader_class(
            self.train_set, batch_size=16, shuffle=True, num_workers=self.num_workers, collate_fn=NoisyCollate()
        )

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=30)


def fit(
    root: str,
    max_epochs: int,
    ckpt_path: str | None = None,
    loader_class: type = ResumableDataLoader,
    num_workers: int = 0,
    every_n_train_steps: int | None = None,
    limit_train_batches: int | None = None,
    devices: int = 1,
) -> dict:
    """Train an MLP with dropout on shuffled, augmented batches; checkpoints every N steps and every epoch."""
    pl.seed_everything(0, verbose=False)
    model = MLP(input_shape=(16,), num_outputs=4, hidden_sizes=[32], dropout=0.3)
    callbacks = [SeedEverything(0), ModelCheckpoint(dirpath=root, filename="epoch{epoch}", save_top_k=-1)]
    if every_n_train_steps:
        callbacks.append(
            ModelCheckpoint(dirpath=root, filename="step{step}", every_n_train_steps=every_n_train_steps, save_top_k=-1)
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=max_epochs,
        limit_train_batches=limit_train_batches,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=Blobs(loader_class, num_workers), ckpt_path=ckpt_path)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy()
    return {"weights": weights, "warnings": [str(w.message) for w in caught], "rank": trainer.global_rank}


def step_ckpt(root: Path, step: int) -> str:
    (path,) = root.glob(f"stepstep={step}*.ckpt")
    return str(path)


# --- the loader alone -----------------------------------------------------------------------------


def batches(loader, limit: int | None = None) -> list[torch.Tensor]:
    out = []
    for x, _ in loader:
        out.append(x)
        if limit is not None and len(out) == limit:
            break
    return out


def test_uninterrupted_it_draws_what_a_dataloader_draws() -> None:
    """A drop-in: the same arguments and the same seed give the same batches as torch's DataLoader."""
    data = TensorDataset(torch.arange(40.0).unsqueeze(1), torch.zeros(40))
    torch.manual_seed(3)
    expected = batches(DataLoader(data, batch_size=4, shuffle=True)) + batches(DataLoader(data, batch_size=4))
    torch.manual_seed(3)
    ours = batches(ResumableDataLoader(data, batch_size=4, shuffle=True)) + batches(ResumableDataLoader(data, 4))
    assert all(torch.equal(a, b) for a, b in zip(expected, ours, strict=True))


@pytest.mark.parametrize("generator", [False, True], ids=["global-rng", "own-generator"])
def test_state_resumes_the_epoch_in_a_new_loader_and_loads_weights_only(generator: bool) -> None:
    data = TensorDataset(torch.arange(40.0).unsqueeze(1), torch.zeros(40))

    def make() -> ResumableDataLoader:
        own = torch.Generator().manual_seed(5) if generator else None
        return ResumableDataLoader(data, batch_size=4, shuffle=True, collate_fn=NoisyCollate(), generator=own)

    torch.manual_seed(0)
    loader = make()
    batches(loader)  # a whole epoch first: the interrupted one is the second, drawn from moved generators
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    buffer = io.BytesIO()
    torch.save(loader.state_dict(), buffer)
    rng_at_save = torch.get_rng_state()
    rest = [x for x, _ in iterator]
    assert len(rest) == 7

    torch.manual_seed(99)  # another process: the epoch's order comes from the saved state, not from this one
    resumed = make()
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    torch.set_rng_state(rng_at_save)  # what SeedEverything restores on resume
    got = [x for x, _ in resumed]
    # The same samples in the same order, and the same noise: the replay drew from the epoch's saved state
    # and left the process's RNG as it found it.
    assert all(torch.equal(a, b) for a, b in zip(got, rest, strict=True))
    # The next epoch is a whole, fresh pass.
    assert len(batches(resumed)) == 10


def test_an_iterable_dataset_is_not_replayed_and_says_why() -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.arange(12.0).unsqueeze(1))

    loader = ResumableDataLoader(Stream(), batch_size=3)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    resumed = ResumableDataLoader(Stream(), batch_size=3)
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match="IterableDataset .*cannot save the position of a stream"):
        first = next(iter(resumed))
    assert first.flatten().tolist() == [0.0, 1.0, 2.0]


# --- resumed with a Trainer -----------------------------------------------------------------------


def test_mid_epoch_resume_is_bit_identical(tmp_path: Path) -> None:
    full = fit(str(tmp_path / "full"), 3, every_n_train_steps=7)
    # Step 21 is batch 6 of epoch 1 (15 batches per epoch): the middle of an epoch.
    resumed = fit(str(tmp_path / "resumed"), 3, ckpt_path=step_ckpt(tmp_path / "full", 21))
    assert np.array_equal(resumed["weights"], full["weights"])
    assert not any("not resumable" in w for w in resumed["warnings"])  # Lightning sees a stateful loader


def test_plain_dataloader_diverges_mid_epoch_and_seed_everything_says_why(tmp_path: Path) -> None:
    """The planted bug: Lightning's default. SeedEverything names the cause and the fix."""
    full = fit(str(tmp_path / "full"), 2, loader_class=DataLoader, every_n_train_steps=7)
    resumed = fit(str(tmp_path / "resumed"), 2, ckpt_path=step_ckpt(tmp_path / "full", 7), loader_class=DataLoader)
    assert not np.allclose(resumed["weights"], full["weights"], atol=1e-4)
    (warning,) = [w for w in resumed["warnings"] if w.startswith("SeedEverything")]
    assert "DataLoader keeps no position" in warning and "ResumableDataLoader" in warning
    # At an epoch boundary a plain DataLoader is exact (SeedEverything restores the RNG), and nothing warns.
    at_end = fit(
        str(tmp_path / "at_end"), 2, ckpt_path=str(tmp_path / "full" / "epochepoch=0.ckpt"), loader_class=DataLoader
    )
    assert np.array_equal(at_end["weights"], full["weights"])
    assert not any(w.startswith("SeedEverything") for w in at_end["warnings"])


def test_a_step_checkpoint_at_the_end_of_a_shortened_epoch_starts_the_next_epoch_afresh(tmp_path: Path) -> None:
    """With limit_train_batches=10 the checkpoint of step 10 ends epoch 0 although the loader has 15 batches.
    Lightning hands the loader its state back (it restarts "on train batch end"); the sampler's epoch, which
    Lightning sets, tells the loader that a new epoch begins, so it does not replay the old one."""
    full = fit(str(tmp_path / "full"), 3, every_n_train_steps=5, limit_train_batches=10)
    ckpt = step_ckpt(tmp_path / "full", 10)
    resumed = fit(str(tmp_path / "resumed"), 3, ckpt_path=ckpt, limit_train_batches=10)
    assert np.array_equal(resumed["weights"], full["weights"])


@pytest.mark.slow
def test_mid_epoch_resume_is_bit_identical_with_loader_workers(tmp_path: Path) -> None:
    """The augmentation runs in 2 worker processes; replaying the epoch's first batches gives them their state back."""
    full = fit(str(tmp_path / "full"), 2, num_workers=2, every_n_train_steps=5)
    resumed = fit(str(tmp_path / "resumed"), 2, ckpt_path=step_ckpt(tmp_path / "full", 20), num_workers=2)
    assert np.array_equal(resumed["weights"], full["weights"])


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_resume_is_bit_identical_mid_epoch_and_at_epoch_end_with_workers(tmp_path: Path) -> None:
    """2 processes, 2 workers each: every rank's position and RNG come back, in the middle of an epoch and at
    its end (where Lightning itself builds the first resumed iterator before setting the sampler's epoch)."""
    # 120 samples per rank in batches of 16: 8 batches per epoch; step 11 is batch 3 of epoch 1.
    full = run_ddp(fit, str(tmp_path / "full"), 2, num_workers=2, every_n_train_steps=11, devices=2, timeout=300)
    assert np.array_equal(full[0]["weights"], full[1]["weights"])
    mid = run_ddp(fit, str(tmp_path / "mid"), 2, ckpt_path=step_ckpt(tmp_path / "full", 11), num_workers=2, devices=2)
    end_ckpt = str(tmp_path / "full" / "epochepoch=0.ckpt")
    end = run_ddp(fit, str(tmp_path / "end"), 2, ckpt_path=end_ckpt, num_workers=2, devices=2)
    for rank in (0, 1):
        assert np.array_equal(mid[rank]["weights"], full[rank]["weights"])
        assert np.array_equal(end[rank]["weights"], full[rank]["weights"])
    # Both ranks' positions are in the checkpoint rank 0 wrote.
    ckpt = torch.load(step_ckpt(tmp_path / "full", 11), weights_only=True)
    (state,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert [s["yielded"] for s in state["ranks"]] == [3, 3]
    # And both ranks' RNG states: each rank draws from its own stream (its own dropout masks), derived
    # from the one seed.
    (rng,) = [v for k, v in ckpt["callbacks"].items() if "SeedEverything" in k]
    assert len(rng["rng_states"]) == 2
    assert not torch.equal(rng["rng_states"][0]["torch"], rng["rng_states"][1]["torch"])

    # Resuming that 2-rank checkpoint on 1 process cannot be exact: it says so and still runs, with the
    # shared shuffle seed and per-worker seeding intact (what a DistributedSampler needs to shard the data).
    one = fit(str(tmp_path / "one"), 2, ckpt_path=end_ckpt)
    assert any("RNG states of 2 processes but this run has 1" in w for w in one["warnings"]), one["warnings"]
    assert os.environ["PL_GLOBAL_SEED"] == "0" and os.environ["PL_SEED_WORKERS"] == "1"


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_resume_with_workers_and_a_plain_dataloader_diverges_and_seed_everything_says_why(tmp_path: Path) -> None:
    """The planted bug under DDP, even at an epoch boundary: Lightning builds the first resumed epoch's iterator
    before it sets the DistributedSampler's epoch, and with workers that iterator draws its order at once."""
    full = run_ddp(fit, str(tmp_path / "full"), 2, loader_class=DataLoader, num_workers=2, devices=2, timeout=300)
    ckpt = str(tmp_path / "full" / "epochepoch=0.ckpt")
    end = run_ddp(fit, str(tmp_path / "end"), 2, ckpt_path=ckpt, loader_class=DataLoader, num_workers=2, devices=2)
    assert not np.array_equal(end[0]["weights"], full[0]["weights"])
    assert any("shuffled as epoch 0" in w for w in end[0]["warnings"])
