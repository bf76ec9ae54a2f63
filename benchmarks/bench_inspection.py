"""Cost of ``inspect_data`` on an MNIST-sized set, beside a naive pandas implementation of the same checks.

60,000 samples of shape 1x28x28 (float32; 50,000 train, 10,000 test) with planted exact duplicates,
train/test leaks, conflicting labels and NaN samples.

1. The exact pass (duplicates, leakage, conflicts, NaN/Inf, per-channel statistics, outliers; no
   near-duplicate search) in samples/s; target: the whole pass <= 10 s on 2 cores.
2. The same checks the way one writes them in a notebook: a DataFrame of each sample's bytes and
   label, ``duplicated``/``merge``/``groupby(...).nunique()``, NumPy statistics. Same data, same run;
   the ratio is printed, and both must find the same counts.
3. The near-duplicate search alone at 10k and 60k samples (``near_duplicate_max_samples`` raised).

Usage: python benchmarks/bench_inspection.py [--samples 60000] [--planted 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from lightning_tricks.functional.data_scan import near_duplicate_pairs
from lightning_tricks.inspection import inspect_data


def make_data(n: int, planted: int, seed: int = 0) -> tuple[dict[str, TensorDataset], dict[str, int]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    n_train = n * 5 // 6
    idx = torch.randperm(n_train, generator=g)
    dup_src, dup_dst = idx[:planted], idx[planted : 2 * planted]
    x[dup_dst], y[dup_dst] = x[dup_src], y[dup_src]
    conf_src, conf_dst = idx[2 * planted : 3 * planted], idx[3 * planted : 4 * planted]
    x[conf_dst], y[conf_dst] = x[conf_src], (y[conf_src] + 1) % 10
    x[idx[4 * planted : 5 * planted], 0, 0, 0] = float("nan")
    leak_dst = n_train + torch.randperm(n - n_train, generator=g)[:planted]
    x[leak_dst], y[leak_dst] = x[idx[5 * planted : 6 * planted]], y[idx[5 * planted : 6 * planted]]
    data = {"train": TensorDataset(x[:n_train], y[:n_train]), "test": TensorDataset(x[n_train:], y[n_train:])}
    return data, {"duplicates": 2 * planted, "leaks": planted, "conflicts": planted, "nan": planted}


def ours(data: dict[str, TensorDataset]) -> dict[str, int]:
    report = inspect_data(data, near_duplicates=False)
    return {
        "duplicates": report.splits["train"].num_duplicates,
        "leaks": len(report.leaks["train/test"]),
        "conflicts": len(report.conflicts),
        "nan": len(report.splits["train"].samples_with_nan),
    }


def naive(data: dict[str, TensorDataset]) -> dict[str, int]:
    """The notebook way: one DataFrame row per sample (its bytes as the key), pandas for the grouping."""
    frames = []
    for split, dataset in data.items():
        x, y = dataset.tensors[0].numpy(), dataset.tensors[1].numpy()
        flat = x.reshape(len(x), -1)
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "index": np.arange(len(x)),
                    "key": [row.tobytes() for row in flat],
                    "label": y,
                    "nan": np.isnan(flat).any(1),
                    "norm": np.sqrt(np.nansum(flat.astype(np.float64) ** 2, 1)),
                    "mean": np.nanmean(flat, 1),
                }
            )
        )
        _ = np.nanmean(x, axis=(0, 2, 3)), np.nanstd(x, axis=(0, 2, 3)), np.nanmin(x), np.nanmax(x)
    df = pd.concat(frames, ignore_index=True)
    train, test = df[df.split == "train"], df[df.split == "test"]
    duplicates = int(train.duplicated("key").sum())
    leaks = len(train[["key"]].merge(test[["key"]], on="key"))
    conflicts = int((df.groupby("key")["label"].nunique() > 1).sum())
    median = train["norm"].median()
    _ = (0.6745 * (train["norm"] - median) / (train["norm"] - median).abs().median()).abs() > 6
    return {"duplicates": duplicates, "leaks": leaks, "conflicts": conflicts, "nan": int(train["nan"].sum())}


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--planted", type=int, default=100)
    # One intra-op thread by default: on a 2-core machine shared with other jobs, 2 torch threads
    # measured 5x slower than 1 (they spin against each other); pass --threads 2 on a quiet machine.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, expected = make_data(args.samples, args.planted)
    print(f"{args.samples} samples 1x28x28 float32, planted: {expected}, torch threads: {torch.get_num_threads()}")

    ours(data)  # warm-up: first-call costs (imports, allocator) are not the pass's
    t_ours, found = timed(ours, data)
    t_naive, found_naive = timed(naive, data)
    assert found == expected, (found, expected)
    assert found_naive == expected, (found_naive, expected)
    print(f"inspect_data exact pass:  {t_ours:6.2f} s  {args.samples / t_ours:9.0f} samples/s  found {found}")
    print(f"naive pandas, same checks: {t_naive:6.2f} s  {args.samples / t_naive:9.0f} samples/s")
    print(f"ratio (inspect_data / naive): {t_ours / t_naive:.2f}")

    x = data["train"].tensors[0]
    for n in (10000, 60000):
        if n > args.samples:
            continue
        full = torch.cat([x, data["test"].tensors[0]])[:n]
        t_all, _ = timed(inspect_data, {"train": TensorDataset(full)}, near_duplicate_max_samples=n)
        from lightning_tricks.functional.data_scan import embed

        emb = embed(torch.nan_to_num(full).reshape(n, -1).double())
        t_search, pairs = timed(near_duplicate_pairs, emb, np.arange(n), emb, np.arange(n), 1e-3, True)
        print(
            f"near-duplicate search, {n:>6} samples: {t_search:6.2f} s (pairs, planted copies included: "
            f"{len(pairs)}); "
            f"whole inspect_data with it: {t_all:6.2f} s"
        )


if __name__ == "__main__":
    main()
