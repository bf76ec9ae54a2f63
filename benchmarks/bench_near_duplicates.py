"""Near-duplicate search: faiss's inverted-file range search against the exact all-pairs search.

Data: MNIST-sized samples (784 uniform values, as in ``bench_inspection.py``) with planted near
duplicates: copies with Gaussian noise whose scale spreads their cosine distances over both sides of
the 1e-3 threshold, so recall is measured where it is hard (pairs just inside the threshold).

1. Recall on 10,000 samples: the pairs the default search (``near_duplicate_pairs``) finds, out of
   those the exact search (a chunked all-pairs matmul: the previous implementation, kept here as
   the reference) finds; target >= 0.99.
2. Time at 60,000 samples, both searches in the same run; target <= 5 s for the default one, and
   their ratio.

Usage: python benchmarks/bench_near_duplicates.py [--samples 60000] [--planted 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lightning_tricks.functional.data_scan import embed, near_duplicate_pairs

THRESHOLD = 1e-3


def exact_pairs(emb: np.ndarray, threshold: float, chunk: int = 2048) -> set[tuple[int, int]]:
    """Every pair within ``threshold``: all-pairs inner products, chunked (time n^2 x 64)."""
    b = torch.from_numpy(emb)
    pairs = set()
    for start in range(0, len(emb), chunk):
        rows, cols = (b[start : start + chunk] @ b.T > 1.0 - threshold).nonzero(as_tuple=True)
        pairs |= {(start + i, j) for i, j in zip(rows.tolist(), cols.tolist(), strict=True) if j > start + i}
    return pairs


def make_embeddings(n: int, planted: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=g)
    order = torch.randperm(n, generator=g)
    src, dst = order[:planted], order[planted : 2 * planted]
    noise = torch.logspace(-3.5, -1.5, planted).unsqueeze(1)  # distances from ~1e-6 to ~1e-2
    x[dst] = x[src] + noise * torch.randn(planted, 784, generator=g)
    return embed(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--planted", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)

    small = make_embeddings(10000, args.planted)
    truth = exact_pairs(small, THRESHOLD)
    found = {(i, j) for i, j, _ in near_duplicate_pairs(small, np.arange(10000), small, np.arange(10000),
                                                         THRESHOLD, same=True)}  # fmt: skip
    recall = len(truth & found) / max(1, len(truth))
    print(f"10,000 samples: {len(truth)} exact pairs within {THRESHOLD}; found {len(found)}; recall {recall:.4f}")

    big = make_embeddings(args.samples, args.planted)
    start = time.perf_counter()
    pairs = near_duplicate_pairs(big, np.arange(len(big)), big, np.arange(len(big)), THRESHOLD, same=True)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    reference = exact_pairs(big, THRESHOLD)
    exact = time.perf_counter() - start
    recall_big = len(reference & {(i, j) for i, j, _ in pairs}) / max(1, len(reference))
    print(
        f"{args.samples:,} samples: faiss IVF range search {ours:.2f} s (target <= 5 s), exact all-pairs "
        f"{exact:.2f} s: {exact / ours:.1f}x faster; recall {recall_big:.4f} of {len(reference)} pairs"
    )


if __name__ == "__main__":
    main()
