"""Cost of exact resume and of interrupt handling, each against what it replaces, measured in the same run.

1. ``ResumableDataLoader`` against torch's ``DataLoader``: one shuffled epoch over the digits' training split.
2. Its resume: rebuilding the epoch and replaying half of it (load_state_dict, then the first batch),
   with 0 and 2 workers, against iterating those batches in a fresh loader.
3. ``InterruptCheckpoint`` against a bare Trainer (1 process: a flag test per step, also timed alone),
   and, for DDP, one gloo all-reduce of one integer between 2 processes (what each step starts there; it
   runs while the next step trains).

Runs alternate so drift in machine load hits both sides equally; medians are printed.
Usage: python benchmarks/bench_resume.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from lightning_tricks import InterruptCheckpoint, ResumableDataLoader
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.models import MLP


def epoch_seconds(loader_class: type, dataset, num_workers: int = 0) -> float:
    loader = loader_class(dataset, batch_size=32, shuffle=True, num_workers=num_workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def replay_seconds(dataset, num_workers: int) -> tuple[float, float]:
    """(resume to the middle of an epoch and take one batch, iterate to the middle in a fresh loader)."""
    loader = ResumableDataLoader(dataset, batch_size=32, shuffle=True, num_workers=num_workers)
    half = len(loader) // 2
    iterator = iter(loader)
    for _ in range(half):
        next(iterator)
    state = loader.state_dict()
    del iterator
    resumed = ResumableDataLoader(dataset, batch_size=32, shuffle=True, num_workers=num_workers)
    start = time.perf_counter()
    resumed.load_state_dict(state)
    next(iter(resumed))
    resume = time.perf_counter() - start
    fresh = ResumableDataLoader(dataset, batch_size=32, shuffle=True, num_workers=num_workers)
    start = time.perf_counter()
    iterator = iter(fresh)
    for _ in range(half + 1):
        next(iterator)
    return resume, time.perf_counter() - start


def fit_seconds(interrupt: bool, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        pl.seed_everything(0, verbose=False)
        dm = DigitsDataModule(seed=0, batch_size=32)
        model = MLP(input_shape=dm.input_shape, num_outputs=10)
        trainer = pl.Trainer(
            max_epochs=epochs,
            callbacks=[InterruptCheckpoint()] if interrupt else [],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=root,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        return time.perf_counter() - start


def hook_seconds(calls: int = 100_000) -> float:
    """InterruptCheckpoint's work at the end of a step on one process, per step (no signal received)."""
    callback = InterruptCheckpoint()
    start = time.perf_counter()
    for _ in range(calls):
        callback.on_train_batch_end(None, None)
    return (time.perf_counter() - start) / calls


def _all_reduce_worker(rank: int, calls: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    flag = torch.zeros(1, dtype=torch.int64)
    for _ in range(50):  # warm up
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if rank == 0:
        out.put((time.perf_counter() - start) / calls)
    dist.destroy_process_group()


def all_reduce_seconds(calls: int = 2000) -> float:
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_all_reduce_worker, args=(r, calls, queue)) for r in range(2)]
    for p in processes:
        p.start()
    result = queue.get()
    for p in processes:
        p.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    dm = DigitsDataModule(seed=0, batch_size=32)
    dm.setup()
    train = dm.datasets["train"]

    plain, ours = [], []
    for _ in range(args.repeats):
        plain.append(epoch_seconds(DataLoader, train))
        ours.append(epoch_seconds(ResumableDataLoader, train))
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"one epoch ({len(train)} samples): DataLoader {p * 1e3:.2f} ms, ", end="")
    print(f"ResumableDataLoader {o * 1e3:.2f} ms, x{o / p:.3f}")

    for workers in (0, 2):
        pairs = [replay_seconds(train, workers) for _ in range(args.repeats)]
        r, f = statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)
        print(f"resume at half an epoch, {workers} workers: {r * 1e3:.1f} ms vs {f * 1e3:.1f} ms to iterate there")

    bare, guarded = [], []
    for _ in range(args.repeats):
        bare.append(fit_seconds(False, args.epochs))
        guarded.append(fit_seconds(True, args.epochs))
    b, g = statistics.median(bare), statistics.median(guarded)
    print(f"fit {args.epochs} epochs: bare {b:.3f} s, with InterruptCheckpoint {g:.3f} s, x{g / b:.3f}")
    print(f"InterruptCheckpoint at a step's end, 1 process: {hook_seconds() * 1e9:.0f} ns")
    print(f"DDP, 2 processes: one gloo all-reduce of the interrupt flag {all_reduce_seconds() * 1e6:.0f} us per step")


if __name__ == "__main__":
    main()
