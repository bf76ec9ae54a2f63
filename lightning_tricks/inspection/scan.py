"""Recipe step 1, "become one with the data": one pass over every split, one report of what is wrong.

``inspect_data(datamodule)`` (or a dict ``{split: Dataset | DataLoader}``) streams each split once
through :class:`~lightning_tricks.functional.data_scan.SplitScan` and returns a :class:`DataReport`:
class balance, exact duplicates, train/val/test leakage, conflicting labels, NaN/Inf, per-channel
statistics and normalisation constants, outliers and near duplicates, with figures of the samples.
``report.has_errors`` (leakage or NaN/Inf) is what ``lightning-tricks inspect strict=true`` fails on.

Under DDP each rank scans its strided shard (global indices kept) and the scans are gathered and
merged, so every rank holds the report one process would have written.

The report and its findings live in :mod:`lightning_tricks.inspection.report`, the math in
:mod:`lightning_tricks.functional.data_scan`, the pictures in :mod:`lightning_tricks.inspection.figures`.

Thresholds, and why (measured on the built-in data sets, see tests/test_inspection.py):

* not normalised: ``|mean| > 1`` or ``std`` outside ``[0.2, 5]`` per channel/feature -- within
  these bounds a standard initialisation still sees inputs of order one;
* outliers: robust z-score of a sample's L2 norm or mean beyond 6 -- the largest on clean digits
  is 3.2, on clean MNIST-1D 4.2 (none flagged); a sample scaled x50 scores in the hundreds;
* near duplicates: cosine distance below 1e-3 between centred 64-value embeddings (a correlation
  above 0.999), searched in splits of up to 1M samples (faiss); the closest distinct pair in
  clean digits is at 0.006, so none is flagged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_tricks.functional.data_scan import (
    SplitScan,
    conflict_groups,
    cross_pairs,
    duplicate_groups,
    near_duplicate_pairs,
    outliers,
)
from lightning_tricks.inspection.report import DataReport, Finding, SplitReport, findings_of
from lightning_tricks.utilities.protocol import split_maybe_unlabelled

__all__ = ["DataReport", "Finding", "SplitReport", "gather_objects", "inspect_data"]

DEFAULT_BATCH_SIZE = 512


def gather_objects(obj: Any) -> list[Any]:
    """``all_gather`` for :func:`inspect_data` under ``torch.distributed`` (any backend, gloo included).

    Every rank must call it (it is a collective); returns the objects of all ranks, in rank order.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def inspect_data(
    source: pl.LightningDataModule | Mapping[str, Dataset | DataLoader],
    *,
    splits: Sequence[str] = ("train", "val", "test"),
    batch_size: int | None = None,
    outlier_threshold: float = 6.0,
    near_duplicates: bool = True,
    near_duplicate_max_samples: int = 1_000_000,
    near_duplicate_threshold: float = 1e-3,
    split_batch: Callable[[Any], tuple[Any, Any]] | None = None,
    rank: int = 0,
    world_size: int = 1,
    all_gather: Callable[[Any], list[Any]] | None = None,
) -> DataReport:
    """Scan each split of ``source`` once and report what a practitioner should look at before training.

    Args:
        source: a ``LightningDataModule`` (``prepare_data``/``setup`` are called, then
            ``<split>_dataloader()``) or a dict ``{split: Dataset | DataLoader}``. Loaders are re-read in
            index order, unshuffled, so reported indices are the data set's.
        splits: which splits to scan (missing ones are skipped); leakage is checked between each pair.
        batch_size: samples per step of the scan (default 512); memory stays bounded by it.
        outlier_threshold: robust z-score of a sample's L2 norm or mean above which it is an outlier.
        near_duplicates: search near-duplicate pairs (cosine distance of 64-value embeddings).
        near_duplicate_max_samples: skip the search in splits larger than this (256 MB of embeddings per 1M).
        near_duplicate_threshold: cosine distance below which two samples are near duplicates.
        split_batch: ``batch -> (inputs, targets)`` when batches do not follow the protocol.
        rank, world_size, all_gather: for DDP: this rank scans samples ``rank::world_size``;
            ``all_gather(obj) -> [obj of rank 0, ...]`` must gather picklable objects from every rank
            (:func:`gather_objects` does it with ``torch.distributed``). All ranks get the same report.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be None or an integer >= 1, got {batch_size!r}.")
    for name, value, low in (
        ("outlier_threshold", outlier_threshold, 0.0),
        ("near_duplicate_threshold", near_duplicate_threshold, 0.0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
            raise ValueError(f"`{name}` must be a number > {low}, got {value!r}.")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"`world_size` must be an integer >= 1, got {world_size!r}.")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"`rank` must be an integer in [0, {world_size}), got {rank!r}.")
    if world_size > 1 and all_gather is None:
        raise ValueError(
            "`all_gather` is required when `world_size` > 1 (e.g. lightning_tricks.inspection.gather_objects)."
        )
    if isinstance(splits, str):
        splits = (splits,)
    data = _split_sources(source, splits)
    max_embedded = near_duplicate_max_samples if near_duplicates else 0
    scans: dict[str, SplitScan] = {}
    partitioned: dict[str, bool] = {}
    for name, loader_or_dataset in data.items():
        scan = SplitScan(keep_embeddings=near_duplicates, max_embedded=max_embedded)
        batches, partitioned[name] = _ordered_batches(
            loader_or_dataset, rank, world_size, batch_size or DEFAULT_BATCH_SIZE
        )
        for batch, indices in batches:
            inputs, targets = split_maybe_unlabelled(batch, split_batch)
            if indices is None:  # an iterable data set: position in the stream
                indices = torch.arange(scan.num_samples, scan.num_samples + len(inputs))
            scan.update(inputs, targets, indices)
        scans[name] = scan
    if world_size > 1:
        gathered = all_gather(scans)  # one collective for all splits, so every rank calls it equally often
        scans = {
            name: SplitScan.merged([g[name] for g in gathered]) if partitioned[name] else gathered[0][name]
            for name in scans
        }
    settings = {
        "splits": list(data),
        "outlier_threshold": float(outlier_threshold),
        "near_duplicates": bool(near_duplicates),
        "near_duplicate_max_samples": int(near_duplicate_max_samples),
        "near_duplicate_threshold": float(near_duplicate_threshold),
    }
    report = build_report(scans, settings)
    report.datasets = {name: _dataset_of(d) for name, d in data.items()}
    report.split_batch = split_batch
    return report


def build_report(scans: Mapping[str, SplitScan], settings: dict[str, Any]) -> DataReport:
    """Turn finished scans (one per split) into the report: the cross-split checks and the findings."""
    samples = {name: scan.samples() for name, scan in scans.items()}
    threshold = settings["near_duplicate_threshold"]
    split_reports = {}
    for name, scan in scans.items():
        split_reports[name] = _split_report(name, scan, samples[name], settings)
    names = [n for n in scans if samples[n]]
    leaks, near_leaks = {}, {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, sb = samples[a], samples[b]
            leaks[f"{a}/{b}"] = cross_pairs(sa["digest"], sa["index"], sb["digest"], sb["index"])
            if "embedding" in sa and "embedding" in sb:
                exact = set(leaks[f"{a}/{b}"])
                pairs = near_duplicate_pairs(
                    sa["embedding"], sa["index"], sb["embedding"], sb["index"], threshold, False
                )
                near_leaks[f"{a}/{b}"] = [p for p in pairs if (p[0], p[1]) not in exact]
    report = DataReport(
        splits=split_reports,
        leaks=leaks,
        conflicts=conflict_groups(samples),
        near_duplicate_leaks=near_leaks,
        findings=[],
        settings=settings,
        labels={n: (s["index"], s["label"]) for n, s in samples.items() if "label" in s},
    )
    report.findings = findings_of(report)
    return report


def _split_report(name: str, scan: SplitScan, samples: dict[str, np.ndarray], settings: dict[str, Any]) -> SplitReport:
    n = scan.num_samples
    shape = list(scan.sample_shape or ())
    if scan.class_counts:
        kind, counts = "multiclass", dict(sorted(scan.class_counts.items()))
    elif scan.target_mean is not None and scan.binary_values and scan.target_mean.numel() == 1:
        ones = round(float(scan.target_mean[0] * scan.target_count[0]))
        kind, counts = "binary", {0: n - ones, 1: ones}
    elif scan.target_mean is not None and scan.binary_values:
        kind, counts = "multilabel", {}  # target_mean is the positive rate of each label
    elif scan.target_mean is not None:
        kind, counts = "regression", {}
    else:
        kind, counts = "none", {}
    near = None
    if n and "embedding" in samples:
        pairs = near_duplicate_pairs(
            samples["embedding"], samples["index"], samples["embedding"], samples["index"],
            settings["near_duplicate_threshold"], same=True,
        )  # fmt: skip
        exact = {(g[0], j) for g in duplicate_groups(samples["digest"], samples["index"]) for j in g[1:]}
        near = [p for p in pairs if (p[0], p[1]) not in exact and not _same_digest(samples, p)]
    constant = []
    if scan.element_min is not None:
        constant = torch.nonzero(scan.element_min == scan.element_max).reshape(-1).tolist()
    finite = ~(samples["has_nan"] | samples["has_inf"]) if n else np.zeros(0, bool)
    return SplitReport(
        name=name,
        num_samples=n,
        sample_shape=shape,
        input_dtype=scan.input_dtype,
        target_kind=kind,
        class_counts=counts,
        target_mean=None if kind in ("multiclass", "none") else scan.target_mean.tolist(),
        target_std=None if kind in ("multiclass", "none") else scan.target_std.tolist(),
        axis="channel" if len(shape) >= 2 else "feature",
        mean=scan.channel_mean.tolist(),
        std=scan.channel_std.tolist(),
        min=[] if scan.minimum is None else scan.minimum.tolist(),
        max=[] if scan.maximum is None else scan.maximum.tolist(),
        nan_count=[] if scan.nan_count is None else scan.nan_count.tolist(),
        inf_count=[] if scan.inf_count is None else scan.inf_count.tolist(),
        samples_with_nan=samples["index"][samples["has_nan"]].tolist() if n else [],
        samples_with_inf=samples["index"][samples["has_inf"]].tolist() if n else [],
        constant_features=constant,
        duplicate_groups=duplicate_groups(samples["digest"], samples["index"]) if n else [],
        outliers=outliers(samples["norm"], samples["mean"], samples["index"], finite, settings["outlier_threshold"])
        if n
        else [],
        near_duplicates=near,
    )


def _same_digest(samples: dict[str, np.ndarray], pair: tuple[int, int, float]) -> bool:
    where = np.searchsorted(samples["index"], [pair[0], pair[1]])
    return bool((samples["digest"][where[0]] == samples["digest"][where[1]]).all())


# ---- reading the data in a fixed order ------------------------------------------------------------------


def _split_sources(source: Any, splits: Sequence[str]) -> dict[str, Any]:
    if isinstance(source, Mapping):
        unknown = [k for k in source if not isinstance(source[k], (Dataset, DataLoader))]
        if unknown:
            raise ValueError(f"`source` values must be Datasets or DataLoaders; {unknown} are not.")
        return {name: source[name] for name in splits if name in source}
    if not isinstance(source, pl.LightningDataModule):
        raise ValueError(
            f"`source` must be a LightningDataModule or a dict {{split: Dataset | DataLoader}}, got "
            f"{type(source).__name__}."
        )
    source.prepare_data()
    for stage in ("fit", "test"):
        source.setup(stage)
    out = {}
    for name in splits:
        method = getattr(source, f"{name}_dataloader", None)
        if method is None:
            raise ValueError(f"`splits` entry {name!r}: the DataModule has no `{name}_dataloader()`.")
        try:
            loader = method()
        except (NotImplementedError, pl.utilities.exceptions.MisconfigurationException):
            continue  # the DataModule does not define this split
        if isinstance(loader, (list, tuple)):
            out.update({f"{name}/{i}": item for i, item in enumerate(loader)})
        elif loader is not None:
            out[name] = loader
    return out


def _dataset_of(data: Any) -> Any:
    return data.dataset if isinstance(data, DataLoader) else data


def _ordered_batches(data: Any, rank: int, world_size: int, batch_size: int) -> tuple[Iterator[tuple[Any, Any]], bool]:
    """``((batch, global indices) iterator, partitioned)``: samples ``rank::world_size`` in index order.

    Not :func:`lightning_tricks.utilities.sharding.shard`, which hands a single process its loader unchanged
    (shuffled for training) -- here indices must be the data set's in every case. Iterable data sets
    cannot be indexed: every rank reads all of them and ``partitioned`` is False.
    """
    dataset = _dataset_of(data)
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        loader = data if isinstance(data, DataLoader) else DataLoader(dataset, batch_size=batch_size)

        return ((batch, None) for batch in loader), False  # indices: counted by the caller
    indices = torch.arange(rank, len(dataset), world_size)
    collate = data.collate_fn if isinstance(data, DataLoader) else None
    if type(dataset) is TensorDataset and (collate is None or _is_default_collate(collate)):
        # Fast path: slicing the tensors is what default collation of their items would give.
        chunks = indices.split(batch_size)
        return ((list(t[chunk] for t in dataset.tensors), chunk) for chunk in chunks), True
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices.tolist(),
        collate_fn=collate,
        num_workers=data.num_workers if isinstance(data, DataLoader) else 0,
    )
    return zip(loader, indices.split(batch_size), strict=True), True


def _is_default_collate(fn: Any) -> bool:
    from torch.utils.data import default_collate

    return fn is default_collate or getattr(fn, "__name__", "") == "default_collate"
