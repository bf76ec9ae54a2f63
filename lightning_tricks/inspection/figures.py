"""Pictures for a :class:`~lightning_tricks.inspection.DataReport`: look at the data, not only at numbers.

* ``class_balance``: the class priors of each split side by side;
* ``samples_train``: random samples of each class of the training split -- image tiles for
  ``(C, H, W)`` inputs, line plots for signals ``(C, L)``, per-feature histograms for flat rows;
* ``duplicates``, ``conflicts``, ``outliers``: the samples a finding is about, side by side.

Samples are fetched from the data sets by index after the scan, so only map-style data sets get
sample pictures. No pyplot: figures come from :func:`lightning_tricks.utilities.plots.new_figure`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from lightning_tricks.functional.data_scan import split_pair
from lightning_tricks.utilities.plots import new_figure
from lightning_tricks.utilities.protocol import split_maybe_unlabelled

# `report` below is a lightning_tricks.inspection.report.DataReport, typed `Any`: that module imports
# this one (DataReport.figures), and this one does not import it back.

MAX_ROWS = 6  # finding rows drawn per figure


def report_figures(report: Any, samples_per_class: int = 8, seed: int = 0) -> dict[str, Figure]:
    """Every figure that the report has data for, by name (the PNG's file name in ``report.save``)."""
    figures: dict[str, Figure] = {}
    if any(s.class_counts for s in report.splits.values()):
        figures["class_balance"] = class_balance(report)
    # Samples of the training split only (else the first): drawing ~100 axes per split is most of the cost.
    shown = "train" if "train" in report.splits else next(iter(report.splits), None)
    figure = samples_by_class(report, shown, samples_per_class, seed) if shown is not None else None
    if figure is not None:
        figures[f"samples_{shown.replace('/', '_')}"] = figure
    rows = {
        "duplicates": [[(s.name, i) for i in g[:2]] for s in report.splits.values() for g in s.duplicate_groups]
        + [
            [(a, i), (b, j)]
            for key, pairs in report.leaks.items()
            for (i, j), (a, b) in _with_names(report, key, pairs)
        ],
        "conflicts": [[(split, i) for split, i, _ in g[:2]] for g in report.conflicts],
        "outliers": [[(s.name, o["index"])] for s in report.splits.values() for o in s.outliers],
    }
    for name, items in rows.items():
        figure = sample_rows(report, items[:MAX_ROWS], name)
        if figure is not None:
            figures[name] = figure
    return figures


def _with_names(report: Any, key: str, pairs: list[tuple[int, int]]) -> list:
    names = split_pair(key, report.splits)
    return [(p, names) for p in pairs]


def class_balance(report: Any) -> Figure:
    """Grouped bars: the share of each class in each split (equal bars = same distribution)."""
    figure = new_figure(6, 3.5)
    ax = figure.subplots()
    splits = [s for s in report.splits.values() if s.class_counts]
    classes = sorted({c for s in splits for c in s.class_counts})
    width = 0.8 / max(len(splits), 1)
    for k, s in enumerate(splits):
        priors = s.priors
        ax.bar(np.arange(len(classes)) + k * width, [priors.get(c, 0.0) for c in classes], width, label=s.name)
    ax.set_xticks(np.arange(len(classes)) + width * (len(splits) - 1) / 2, [str(c) for c in classes])
    ax.set_xlabel("class")
    ax.set_ylabel("share of samples")
    ax.set_title("class balance")
    ax.legend()
    return figure


def _fetch(report: Any, split: str, index: int) -> tuple[np.ndarray, Any] | None:
    dataset = report.datasets.get(split)
    if dataset is None or not hasattr(dataset, "__getitem__"):
        return None
    try:
        inputs, target = split_maybe_unlabelled(dataset[index], report.split_batch)
    except Exception:  # an item that does not split like a batch: no picture, the numbers still stand
        return None
    inputs = inputs.detach().cpu().float().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs, float)
    return inputs, target


def _kind(shape: tuple[int, ...]) -> str:
    """``image`` for ``(C, H, W)`` with H, W > 1; ``signal`` for other multi-dimensional samples; else ``tabular``."""
    if len(shape) == 3 and shape[1] > 1 and shape[2] > 1:
        return "image"
    return "signal" if len(shape) >= 2 else "tabular"


def _draw(ax: Any, x: np.ndarray, kind: str) -> None:
    if kind == "image":
        image = x if x.ndim == 2 else (x[0] if x.shape[0] not in (3, 4) else np.moveaxis(x, 0, -1))
        finite = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
        ax.imshow(finite, cmap="gray" if finite.ndim == 2 else None)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        for channel in x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x[None]:
            ax.plot(channel, lw=0.8)
        ax.tick_params(labelsize=6)


def samples_by_class(report: Any, split: str, per_class: int = 8, seed: int = 0) -> Figure | None:
    """Random samples of each class of ``split`` (one row per class), or None without data to draw."""
    s = report.splits[split]
    if s.num_samples == 0 or split not in report.datasets:
        return None
    kind = _kind(tuple(s.sample_shape))
    indices, labels = report.labels.get(split, (np.arange(s.num_samples), np.zeros(s.num_samples)))
    rng = np.random.default_rng(seed)
    classes = sorted(s.class_counts) if s.class_counts else [None]
    if kind == "tabular":
        return _feature_histograms(report, split, indices, rng)
    cols = per_class
    figure = new_figure(1.1 * cols + 0.6, 1.0 * len(classes) + 0.4)
    axes = figure.subplots(len(classes), cols, squeeze=False)
    for r, c in enumerate(classes):
        pool = indices if c is None else indices[labels == c]
        chosen = np.sort(rng.choice(pool, size=min(cols, len(pool)), replace=False)) if len(pool) else []
        for k in range(cols):
            ax = axes[r][k]
            if k >= len(chosen) or (item := _fetch(report, split, int(chosen[k]))) is None:
                ax.axis("off")
                continue
            _draw(ax, item[0], kind)
        axes[r][0].set_ylabel("" if c is None else f"class {c}", fontsize=8)
    figure.suptitle(f"{split}: random samples per class")
    return figure


def _feature_histograms(report: Any, split: str, indices: np.ndarray, rng: np.random.Generator) -> Figure | None:
    """Tabular data: a histogram per feature (first 16) over up to 2000 random samples."""
    chosen = np.sort(rng.choice(indices, size=min(2000, len(indices)), replace=False))
    rows = [item[0].reshape(-1) for i in chosen if (item := _fetch(report, split, int(i))) is not None]
    if not rows or len({row.shape for row in rows}) > 1:
        return None  # variable-length samples (token sequences) have no per-position features to histogram
    data = np.stack(rows)[:, :16]
    cols = min(4, data.shape[1])
    figure = new_figure(2.2 * cols, 1.8 * int(np.ceil(data.shape[1] / cols)))
    axes = figure.subplots(int(np.ceil(data.shape[1] / cols)), cols, squeeze=False).reshape(-1)
    for f, ax in enumerate(axes):
        if f >= data.shape[1]:
            ax.axis("off")
            continue
        values = data[:, f]
        ax.hist(values[np.isfinite(values)], bins=30)
        ax.set_title(f"feature {f}", fontsize=8)
        ax.tick_params(labelsize=6)
    figure.suptitle(f"{split}: feature histograms")
    return figure


def sample_rows(report: Any, rows: list[list[tuple[str, int]]], title: str) -> Figure | None:
    """One row per finding: its samples side by side, titled with split, index and target."""
    rows = [row for row in rows if row]
    if not rows:
        return None
    cols = max(len(row) for row in rows)
    figure = new_figure(2.2 * cols, 1.8 * len(rows))
    axes = figure.subplots(len(rows), cols, squeeze=False)
    for r, row in enumerate(rows):
        for k in range(cols):
            ax = axes[r][k]
            item = _fetch(report, row[k][0], row[k][1]) if k < len(row) else None
            if item is None:
                ax.axis("off")
                continue
            x, target = item
            _draw(ax, x, _kind(x.shape))
            label = target.item() if isinstance(target, torch.Tensor) and target.numel() == 1 else target
            ax.set_title(f"{row[k][0]}[{row[k][1]}] y={label}", fontsize=7)
    figure.suptitle(title)
    return figure
