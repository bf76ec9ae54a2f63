"""One streaming pass over a split's samples: counts, statistics, fingerprints (recipe 1, the math only).

:class:`SplitScan` sees each batch once and keeps bounded state: per-channel moments (merged with
Chan's parallel formula, in float64), per-channel NaN/Inf counts, per-element min/max (constant
features), class counts or target moments, and a few numbers *per sample* (a 128-bit BLAKE2b
fingerprint of its input bytes, a key of its target, its L2 norm and mean, NaN/Inf flags and, for
small splits, a 64-value embedding for near duplicates). Samples carry their *global* index, so
scans of disjoint shards (DDP ranks) merge into exactly the scan of the whole split.

The pure functions below turn fingerprints into exact duplicate groups, cross-split leaks and
label conflicts, per-sample numbers into robust-z outliers, embeddings into near-duplicate pairs.

Exactness: two inputs count as identical when their bytes are (``-0.0`` is first mapped to ``0.0``).
With a 128-bit cryptographic hash the chance of any false match among 2**32 samples is about
2**-65, so no second comparison is needed (and no sample has to be kept in memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Width of the embedding used for near-duplicate search (inputs are average-pooled down to this).
EMBEDDING_DIM = 64


def _byte_rows(x: torch.Tensor) -> np.ndarray:
    """``(B, nbytes)`` uint8 view of each sample's contiguous bytes, ``-0.0`` mapped to ``0.0``."""
    x = x.detach().cpu()
    if x.is_floating_point():
        x = x + 0.0  # IEEE: -0.0 + 0.0 == +0.0, so both zeros hash alike; NaN stays NaN
    flat = x.contiguous().reshape(x.shape[0], -1)
    if flat.shape[1] == 0:
        return np.zeros((x.shape[0], 0), np.uint8)
    return flat.view(torch.uint8).numpy()


def sample_digests(x: torch.Tensor) -> np.ndarray:
    """``(B, 2)`` uint64: a 128-bit BLAKE2b fingerprint of each sample's input bytes.

    >>> d = sample_digests(torch.tensor([[1.0, 2.0], [1.0, 2.0], [-0.0, 2.0], [0.0, 2.0]]))
    >>> bool((d[0] == d[1]).all()), bool((d[2] == d[3]).all()), bool((d[0] == d[2]).all())
    (True, True, False)
    """
    rows = _byte_rows(x)
    out = b"".join(hashlib.blake2b(row, digest_size=16).digest() for row in rows)
    return np.frombuffer(out, dtype=np.uint64).reshape(len(rows), 2).copy()


def target_keys(y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, values)`` of a batch of targets: int64 keys equal iff the targets are, and display values.

    Scalar targets key on their float64 bit pattern (value shown as is); any other shape keys on a
    64-bit BLAKE2b of its bytes (value NaN).

    >>> keys, values = target_keys(torch.tensor([3, 3, 1]))
    >>> bool(keys[0] == keys[1] != keys[2]), values.tolist()
    (True, [3.0, 3.0, 1.0])
    """
    y = y.detach().cpu()
    if y[0].numel() == 1:
        values = y.reshape(len(y)).to(torch.float64) + 0.0
        return values.numpy().view(np.int64).copy(), values.numpy().copy()
    rows = _byte_rows(y)
    out = b"".join(hashlib.blake2b(row, digest_size=8).digest() for row in rows)
    return np.frombuffer(out, dtype=np.int64).copy(), np.full(len(rows), np.nan)


def robust_z(values: np.ndarray) -> np.ndarray:
    """Robust z-scores ``0.6745 (x - median) / MAD`` (Iglewicz-Hoaglin); mean absolute deviation if MAD is 0.

    Unlike the classical z-score, the outliers themselves do not inflate the scale that judges them.

    >>> robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0])).round(2).tolist()
    [-1.35, -0.67, 0.0, 0.67, 65.43]
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    centre = np.median(values)
    deviation = np.abs(values - centre)
    mad = np.median(deviation)
    if mad > 0:
        return 0.6745 * (values - centre) / mad
    spread = deviation.mean() * 1.2533  # mean absolute deviation, rescaled to sigma for normal data
    return (values - centre) / spread if spread > 0 else np.zeros_like(values)


def _merge_moments(
    count: torch.Tensor,
    mean: torch.Tensor,
    m2: torch.Tensor,
    count_b: torch.Tensor,
    mean_b: torch.Tensor,
    m2_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations); stable in float64."""
    total = count + count_b
    safe = total.clamp(min=1)
    delta = mean_b - mean
    mean = mean + delta * count_b / safe
    m2 = m2 + m2_b + delta**2 * count * count_b / safe
    return total, mean, m2


@dataclass
class SplitScan:
    """Streaming state of one split; ``update`` per batch, ``merge`` across shards, then read the fields.

    >>> scan = SplitScan(keep_embeddings=False)
    >>> scan.update(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    >>> scan.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), torch.tensor([2]))
    >>> scan.num_samples, scan.channel_mean.round(decimals=4).tolist(), scan.class_counts
    (3, [0.6667, 1.6667], {0: 1, 1: 2})
    """

    keep_embeddings: bool = True
    max_embedded: int = 1_000_000
    sample_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None
    num_samples: int = 0
    # per channel (images/signals: dim 0 of a sample) or per feature (flat samples)
    count: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    minimum: torch.Tensor | None = None
    maximum: torch.Tensor | None = None
    nan_count: torch.Tensor | None = None
    inf_count: torch.Tensor | None = None
    # per input element, for constant features (min == max over the split)
    element_min: torch.Tensor | None = None
    element_max: torch.Tensor | None = None
    # targets
    target_dtype: str | None = None
    class_counts: dict[int, int] = field(default_factory=dict)
    binary_values: bool = True  # all float targets are 0 or 1
    target_count: torch.Tensor | None = None
    target_mean: torch.Tensor | None = None
    target_m2: torch.Tensor | None = None
    # per sample, in chunks (concatenated and ordered by global index in `finalize`)
    chunks: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def update(self, inputs: torch.Tensor, targets: torch.Tensor | None, indices: torch.Tensor) -> None:
        """Add a batch: ``inputs`` ``(B, *sample_shape)``, ``targets`` ``(B, ...)`` or None, global ``indices``."""
        if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0:
            raise ValueError(
                f"Data inspection needs a batch of tensor inputs (B, ...), got {type(inputs).__name__}"
                f"{'' if not isinstance(inputs, torch.Tensor) else ' of shape ()'}; pass `split_batch=` "
                "returning (inputs, targets) tensors."
            )
        if inputs.shape[0] == 0:
            return
        shape = tuple(inputs.shape[1:])
        if self.sample_shape is None:
            self.sample_shape, self.input_dtype = shape, str(inputs.dtype).replace("torch.", "")
        elif shape != self.sample_shape:
            raise ValueError(f"Samples of one split must share a shape: got {shape} after {self.sample_shape}.")
        batch = inputs.shape[0]
        self.num_samples += batch
        self._append("index", np.asarray(indices, dtype=np.int64).reshape(batch))
        self._append("digest", sample_digests(inputs))
        self._update_inputs(inputs.detach().cpu())
        if targets is not None:
            targets = torch.as_tensor(targets).detach().cpu()
            keys, values = target_keys(targets)
            self._append("label_key", keys)
            self._append("label", values)
            self._update_targets(targets)

    def _append(self, name: str, values: np.ndarray) -> None:
        self.chunks.setdefault(name, []).append(values)

    def _update_inputs(self, x: torch.Tensor) -> None:
        # (B, C, K): channels of images/signals, or features of flat samples (K == 1).
        batch = x.shape[0]
        grouped = x.reshape(batch, -1, 1) if x.ndim <= 2 else x.reshape(batch, x.shape[1], -1)
        values = grouped.to(torch.float64)
        # Masks on the input's own dtype; the common all-finite batch skips every masking pass.
        nan = torch.isnan(grouped) if grouped.is_floating_point() else torch.zeros_like(grouped, dtype=torch.bool)
        finite = torch.isfinite(grouped) if grouped.is_floating_point() else ~nan
        all_finite = bool(finite.all())
        if not all_finite:
            values = values.masked_fill(~finite, 0.0)
        count = finite.sum((0, 2)).to(torch.float64)
        mean = values.sum((0, 2)) / count.clamp(min=1)
        deviation = values - mean[None, :, None]
        if not all_finite:
            deviation.masked_fill_(~finite, 0.0)
        m2 = (deviation * deviation).sum((0, 2))
        nan_count = nan.sum((0, 2))
        inf_count = (~finite).sum((0, 2)) - nan_count
        flat = values.reshape(batch, -1)
        if all_finite:
            element_low, element_high = flat.amin(0), flat.amax(0)
        else:
            flat_finite = finite.reshape(batch, -1)
            element_low = flat.masked_fill(~flat_finite, torch.inf).amin(0)
            element_high = flat.masked_fill(~flat_finite, -torch.inf).amax(0)
        shape = (grouped.shape[1], -1)
        low, high = element_low.reshape(shape).amin(1), element_high.reshape(shape).amax(1)
        if self.count is None:
            self.count, self.mean, self.m2, self.minimum, self.maximum = count, mean, m2, low, high
            self.nan_count, self.inf_count = nan_count, inf_count
            self.element_min, self.element_max = element_low, element_high
        else:
            self.count, self.mean, self.m2 = _merge_moments(self.count, self.mean, self.m2, count, mean, m2)
            self.minimum, self.maximum = torch.minimum(self.minimum, low), torch.maximum(self.maximum, high)
            self.nan_count, self.inf_count = self.nan_count + nan_count, self.inf_count + inf_count
            self.element_min = torch.minimum(self.element_min, element_low)
            self.element_max = torch.maximum(self.element_max, element_high)
        # Per sample: what the outlier test ranks, and whether the sample holds NaN/Inf.
        self._append("norm", flat.norm(dim=1).numpy())
        n_finite = finite.reshape(batch, -1).sum(1).clamp(min=1)
        self._append("mean", (flat.sum(1) / n_finite).numpy())
        if all_finite:
            self._append("has_nan", np.zeros(batch, bool))
            self._append("has_inf", np.zeros(batch, bool))
        else:
            has_nan = nan.reshape(batch, -1).any(1)
            self._append("has_nan", has_nan.numpy())
            self._append("has_inf", (~finite & ~nan).reshape(batch, -1).any(1).numpy())
        if self.keep_embeddings:
            if self.num_samples > self.max_embedded:  # too many for the search: free what was kept
                self.keep_embeddings = False
                self.chunks.pop("embedding", None)
            else:
                self._append("embedding", embed(flat))

    def _update_targets(self, y: torch.Tensor) -> None:
        self.target_dtype = str(y.dtype).replace("torch.", "")
        if not y.is_floating_point() and y[0].numel() == 1:  # class ids
            classes, counts = torch.unique(y.reshape(-1), return_counts=True)
            for c, n in zip(classes.tolist(), counts.tolist(), strict=True):
                self.class_counts[int(c)] = self.class_counts.get(int(c), 0) + n
            return
        y = y.reshape(len(y), -1).to(torch.float64)
        self.binary_values = self.binary_values and bool(((y == 0) | (y == 1)).all())
        count = torch.full((y.shape[1],), float(len(y)), dtype=torch.float64)
        mean = y.mean(0)
        m2 = ((y - mean) ** 2).sum(0)
        if self.target_count is None:
            self.target_count, self.target_mean, self.target_m2 = count, mean, m2
        else:
            self.target_count, self.target_mean, self.target_m2 = _merge_moments(
                self.target_count, self.target_mean, self.target_m2, count, mean, m2
            )

    @classmethod
    def merged(cls, scans: list[SplitScan]) -> SplitScan:
        """One scan from scans of disjoint shards (e.g. one per DDP rank), as if one process saw all."""
        scans = [s for s in scans if s.num_samples > 0] or scans[:1]
        out = scans[0]
        for other in scans[1:]:
            if other.sample_shape != out.sample_shape:
                raise ValueError(f"Shards disagree on the sample shape: {out.sample_shape} vs {other.sample_shape}.")
            out.num_samples += other.num_samples
            out.count, out.mean, out.m2 = _merge_moments(out.count, out.mean, out.m2, other.count, other.mean, other.m2)
            out.minimum, out.maximum = (
                torch.minimum(out.minimum, other.minimum),
                torch.maximum(out.maximum, other.maximum),
            )
            out.nan_count, out.inf_count = out.nan_count + other.nan_count, out.inf_count + other.inf_count
            out.element_min = torch.minimum(out.element_min, other.element_min)
            out.element_max = torch.maximum(out.element_max, other.element_max)
            for c, n in other.class_counts.items():
                out.class_counts[c] = out.class_counts.get(c, 0) + n
            out.binary_values = out.binary_values and other.binary_values
            out.target_dtype = out.target_dtype or other.target_dtype
            if other.target_count is not None:
                if out.target_count is None:
                    out.target_count, out.target_mean, out.target_m2 = (
                        other.target_count,
                        other.target_mean,
                        other.target_m2,
                    )
                else:
                    out.target_count, out.target_mean, out.target_m2 = _merge_moments(
                        out.target_count,
                        out.target_mean,
                        out.target_m2,
                        other.target_count,
                        other.target_mean,
                        other.target_m2,
                    )
            out.keep_embeddings = out.keep_embeddings and other.keep_embeddings and out.num_samples <= out.max_embedded
            for name, chunks in other.chunks.items():
                out.chunks.setdefault(name, []).extend(chunks)
            if not out.keep_embeddings:
                out.chunks.pop("embedding", None)
        return out

    def samples(self) -> dict[str, np.ndarray]:
        """The per-sample arrays (``index``, ``digest``, ``label_key``, ``label``, ``norm``, ...) in index order."""
        arrays = {name: np.concatenate(chunks) for name, chunks in self.chunks.items() if chunks}
        if not arrays:
            return {}
        order = np.argsort(arrays["index"], kind="stable")
        return {name: values[order] for name, values in arrays.items()}

    @property
    def channel_mean(self) -> torch.Tensor:
        return self.mean if self.mean is not None else torch.zeros(0, dtype=torch.float64)

    @property
    def channel_std(self) -> torch.Tensor:
        """Population standard deviation per channel/feature (what normalisation divides by)."""
        if self.m2 is None:
            return torch.zeros(0, dtype=torch.float64)
        return (self.m2 / self.count.clamp(min=1)).sqrt()

    @property
    def target_std(self) -> torch.Tensor | None:
        return None if self.target_m2 is None else (self.target_m2 / self.target_count.clamp(min=1)).sqrt()


def embed(per_sample: torch.Tensor) -> np.ndarray:
    """``(B, <=64)`` float32 embedding: average-pooled, centred and L2-normalised (cosine = correlation).

    Centring makes a brightness shift irrelevant; pooling makes small shifts and noise cheap. A
    constant sample has no direction and embeds as zeros (never a near duplicate of anything).
    """
    x = per_sample.to(torch.float32)
    if x.shape[1] > EMBEDDING_DIM:
        x = F.adaptive_avg_pool1d(x[:, None], EMBEDDING_DIM)[:, 0]
    x = x - x.mean(1, keepdim=True)
    return F.normalize(x, dim=1).numpy()


# ---- from per-sample arrays to findings -----------------------------------------------------------------


def duplicate_groups(digests: np.ndarray, indices: np.ndarray) -> list[list[int]]:
    """Groups (sorted index lists, size >= 2) of samples with identical fingerprints, ordered by first index.

    >>> duplicate_groups(np.array([[1, 1], [2, 2], [1, 1], [1, 1]], np.uint64), np.array([10, 11, 12, 13]))
    [[10, 12, 13]]
    """
    if len(digests) == 0:
        return []
    _, inverse, counts = np.unique(digests, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    repeated = np.flatnonzero(counts[inverse] > 1)
    groups: dict[int, list[int]] = {}
    for i in repeated:
        groups.setdefault(int(inverse[i]), []).append(int(indices[i]))
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def cross_pairs(
    digests_a: np.ndarray, indices_a: np.ndarray, digests_b: np.ndarray, indices_b: np.ndarray
) -> list[tuple[int, int]]:
    """All ``(index in a, index in b)`` pairs with identical fingerprints (leakage between two splits).

    >>> a, b = np.array([[1, 1], [2, 2]], np.uint64), np.array([[2, 2], [3, 3]], np.uint64)
    >>> cross_pairs(a, np.array([0, 1]), b, np.array([5, 6]))
    [(1, 5)]
    """
    if len(digests_a) == 0 or len(digests_b) == 0:
        return []
    lookup: dict[bytes, list[int]] = {}
    for row, i in zip(digests_a, indices_a, strict=True):
        lookup.setdefault(row.tobytes(), []).append(int(i))
    set_b = np.unique(digests_b, axis=0)
    common = {row.tobytes() for row in set_b} & lookup.keys()
    if not common:
        return []
    pairs = [
        (i, int(j))
        for row, j in zip(digests_b, indices_b, strict=True)
        if row.tobytes() in common
        for i in lookup[row.tobytes()]
    ]
    return sorted(pairs)


def conflict_groups(
    splits: dict[str, dict[str, np.ndarray]],
) -> list[list[tuple[str, int, float]]]:
    """Groups of identical inputs (within or across splits) whose targets differ: ``[(split, index, label), ...]``."""
    names = [s for s, a in splits.items() if "label_key" in a and len(a["digest"])]
    if not names:
        return []
    digests = np.concatenate([splits[s]["digest"] for s in names])
    keys = np.concatenate([splits[s]["label_key"] for s in names])
    owner = np.concatenate([np.full(len(splits[s]["digest"]), k) for k, s in enumerate(names)])
    index = np.concatenate([splits[s]["index"] for s in names])
    label = np.concatenate([splits[s]["label"] for s in names])
    _, group = np.unique(digests, axis=0, return_inverse=True)
    group = group.reshape(-1)
    # groups with more than one distinct label: count distinct (group, key) pairs per group
    pairs = np.unique(np.stack([group, keys]), axis=1)
    distinct = np.bincount(pairs[0], minlength=group.max() + 1)
    conflicted = np.flatnonzero(distinct[group] > 1)
    out: dict[int, list[tuple[str, int, float]]] = {}
    for i in conflicted:
        out.setdefault(int(group[i]), []).append((names[owner[i]], int(index[i]), float(label[i])))
    return sorted((sorted(g, key=lambda t: (names.index(t[0]), t[1])) for g in out.values()), key=lambda g: g[0][1])


def outliers(
    norms: np.ndarray, means: np.ndarray, indices: np.ndarray, finite: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """Samples whose L2 norm or mean has a robust z-score beyond ``threshold`` (among finite samples)."""
    keep = np.flatnonzero(finite)
    if len(keep) < 3:
        return []
    z_norm, z_mean = robust_z(norms[keep]), robust_z(means[keep])
    worst = np.maximum(np.abs(z_norm), np.abs(z_mean))
    hits = np.flatnonzero(worst > threshold)
    hits = hits[np.argsort(-worst[hits], kind="stable")]
    return [
        {
            "index": int(indices[keep[h]]),
            "z_norm": float(z_norm[h]),
            "z_mean": float(z_mean[h]),
            "norm": float(norms[keep[h]]),
        }
        for h in hits
    ]


# Above this many indexed samples the search is approximate (an inverted-file index); below, exact.
EXACT_SEARCH_MAX = 8192


def near_duplicate_pairs(
    emb_a: np.ndarray,
    idx_a: np.ndarray,
    emb_b: np.ndarray,
    idx_b: np.ndarray,
    threshold: float,
    same: bool,
    nprobe: int = 16,
    seed: int = 0,
) -> list[tuple[int, int, float]]:
    """``(index a, index b, cosine distance)`` for pairs closer than ``threshold``; ``same`` counts each pair once.

    Embeddings are L2-normalised rows (:func:`embed`), so the cosine distance is ``1 - a . b``. The
    search is faiss's range search (Johnson, Douze and Jegou, "Billion-scale similarity search with
    GPUs", 2017): exact (``IndexFlatIP``) for up to :data:`EXACT_SEARCH_MAX` indexed rows, above that
    an inverted-file index (``IndexIVFFlat``: ``2 sqrt(n)`` k-means cells, the ``nprobe`` nearest
    cells searched), whose cost grows as ``n^1.5`` instead of ``n^2``. Near duplicates sit at an angle
    of a few degrees, so they share a cell or a neighbouring one: measured recall 1.0 of the exact
    pairs on 10,000 samples (``benchmarks/bench_near_duplicates.py``).

    >>> e = np.array([[1.0, 0.0], [0.999, 0.04], [0.0, 1.0]], np.float32)
    >>> e /= np.linalg.norm(e, axis=1, keepdims=True)
    >>> [(i, j) for i, j, _ in near_duplicate_pairs(e, np.arange(3), e, np.arange(3), 0.01, same=True)]
    [(0, 1)]
    """
    import faiss  # imported here: only the near-duplicate search needs it

    if len(emb_a) == 0 or len(emb_b) == 0:
        return []
    a = np.ascontiguousarray(emb_a, dtype=np.float32)
    b = np.ascontiguousarray(emb_b, dtype=np.float32)
    dim = b.shape[1]
    if len(b) <= EXACT_SEARCH_MAX:
        index = faiss.IndexFlatIP(dim)
    else:
        cells = int(2 * np.sqrt(len(b)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed  # the same cells, so the same pairs, on every run
        index.cp.niter = 10
        index.cp.max_points_per_centroid = 64  # k-means on a sample: the cells need not be optimal
        index.train(b)
        index.nprobe = min(nprobe, cells)
    index.add(b)
    limits, similarity, found = index.range_search(a, 1.0 - threshold)
    rows = np.repeat(np.arange(len(a)), np.diff(limits.astype(np.int64)))
    valid_a = np.linalg.norm(a, axis=1) > 0.5  # constant samples embed as 0: never a near duplicate
    valid_b = np.linalg.norm(b, axis=1) > 0.5
    keep = valid_a[rows] & valid_b[found]
    if same:  # each unordered pair once, never a sample with itself
        keep &= found > rows
    return sorted(
        (int(idx_a[i]), int(idx_b[j]), max(1.0 - float(d), 0.0))
        for i, j, d in zip(rows[keep], found[keep], similarity[keep], strict=True)
    )


def split_pair(key: str, names: Sequence[str]) -> tuple[str, str]:
    """The two split names of a cross-split key ``"<a>/<b>"``; names may hold ``/`` themselves (``val/0``).

    >>> split_pair("train/val/1", ["train", "val/0", "val/1"])
    ('train', 'val/1')
    """
    for a in names:
        if key.startswith(f"{a}/") and key[len(a) + 1 :] in names:
            return a, key[len(a) + 1 :]
    raise ValueError(f"{key!r} is not '<split>/<split>' for splits {list(names)}.")
