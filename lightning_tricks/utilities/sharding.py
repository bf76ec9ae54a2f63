"""Split a loader's samples exactly across ranks: each sample once, no padding, no duplicates.

Lightning's DistributedSampler pads the data set so every rank gets the same number of samples;
padded samples are counted twice in any sum. For statistics that must be exact (target priors,
the full-set loss) each rank instead takes samples ``rank, rank + W, rank + 2W, ...`` in order.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset


def shard(loader: DataLoader, rank: int, world_size: int, shuffle_seed: int | None = None) -> tuple[DataLoader, bool]:
    """This rank's share of a loader's samples, and whether shards partition the data (else all ranks see all).

    Only map-style data sets with a length can be partitioned; an iterable one is returned as is, so
    every rank reads all of it (callers then must not sum across ranks). With ``shuffle_seed`` the
    samples are first permuted by that seed (the same permutation on every rank, so shards stay
    disjoint): for training-like passes, where a sorted data set would bias what is seen first.
    """
    dataset = getattr(loader, "dataset", None)
    if world_size == 1 or dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return loader, False
    order = None
    if shuffle_seed is not None:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
    return strided(loader, rank, world_size, order)[0], True


def strided(
    loader: DataLoader, rank: int, world_size: int, order: list[int] | None = None
) -> tuple[DataLoader, list[int]]:
    """A loader over samples ``order[rank::world_size]`` of ``loader``'s (map-style) data set, in that order.

    ``order`` defaults to the data set's own order, so position k of the result is sample ``indices[k]``
    whatever the original loader's sampler did (even in one process): for per-sample results keyed by index.
    Batch size, collation and workers are the loader's.
    """
    dataset = loader.dataset
    indices = list((range(len(dataset)) if order is None else order)[rank::world_size])
    return (
        DataLoader(
            dataset,
            batch_size=loader.batch_size or 256,
            sampler=indices,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
        ),
        indices,
    )
