"""The data report: what :func:`~lightning_tricks.inspection.inspect_data` found, and its renderings.

:class:`DataReport` holds one :class:`SplitReport` per split, the cross-split findings (leaks,
conflicts, near-duplicate leaks) and the sentences (:class:`Finding`) that :func:`findings_of` derives
from them with the thresholds below; ``to_markdown``/``to_dict``/``save``/``figures`` render it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_tricks.functional.data_scan import split_pair

# Why these values: see the docstring of lightning_tricks.inspection.
NORMALISED_MEAN = 1.0  # |mean| above this: a channel/feature is not centred
NORMALISED_STD = (0.2, 5.0)  # std outside this: not scaled
IMBALANCE_RATIO = 10.0  # recipe 2.5's example: a 1:10 imbalance deserves a bias init (and a look)
SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    """One sentence of the report: ``error`` (leakage, NaN/Inf), ``warning`` (worth a look) or ``info``."""

    severity: str
    check: str
    message: str


@dataclass
class SplitReport:
    """What one split holds: size, targets, per-channel statistics and its own defects (global indices)."""

    name: str
    num_samples: int
    sample_shape: list[int]
    input_dtype: str | None
    target_kind: str  # "multiclass" | "binary" | "multilabel" | "regression" | "none"
    class_counts: dict[int, int]
    target_mean: list[float] | None
    target_std: list[float] | None
    axis: str  # "channel" (images/signals) or "feature" (flat samples)
    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    nan_count: list[int]
    inf_count: list[int]
    samples_with_nan: list[int]
    samples_with_inf: list[int]
    constant_features: list[int]  # flat element indices with a single value over the split
    duplicate_groups: list[list[int]]
    outliers: list[dict[str, Any]]
    near_duplicates: list[tuple[int, int, float]] | None  # None: not searched (split too large or disabled)

    @property
    def priors(self) -> dict[int, float]:
        total = sum(self.class_counts.values())
        return {c: n / total for c, n in sorted(self.class_counts.items())} if total else {}

    @property
    def num_duplicates(self) -> int:
        """Extra copies: a group of 3 identical samples counts 2."""
        return sum(len(g) - 1 for g in self.duplicate_groups)


@dataclass
class DataReport:
    """The inspection's results; ``to_markdown``/``to_dict``/``save``/``figures`` render them."""

    splits: dict[str, SplitReport]
    leaks: dict[str, list[tuple[int, int]]]  # "train/test" -> [(train index, test index), ...]
    conflicts: list[list[tuple[str, int, float]]]  # identical inputs, different targets
    near_duplicate_leaks: dict[str, list[tuple[int, int, float]]]
    findings: list[Finding]
    settings: dict[str, Any]
    # For figures only: the data sets (fetch samples by index) and per-sample labels; not serialised.
    datasets: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    labels: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)
    split_batch: Callable[[Any], tuple[Any, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def has_errors(self) -> bool:
        """Leakage between splits or NaN/Inf in the inputs: what ``strict`` mode fails on."""
        return any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite numbers as strings)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float):
                return value if math.isfinite(value) else str(value)
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        splits = {}
        for name, s in self.splits.items():
            entry = {k: v for k, v in vars(s).items()}
            entry["priors"] = s.priors
            entry["num_duplicates"] = s.num_duplicates
            splits[name] = clean(entry)
        return {
            "has_errors": self.has_errors,
            "findings": [vars(f) for f in self.findings],
            "splits": splits,
            "leaks": clean(self.leaks),
            "conflicts": clean(self.conflicts),
            "near_duplicate_leaks": clean(self.near_duplicate_leaks),
            "settings": clean(self.settings),
        }

    def to_markdown(self, max_rows: int = 10) -> str:
        """The report as Markdown: findings, then a table per check (at most ``max_rows`` rows each)."""
        verdict = "errors found" if self.has_errors else ("warnings" if self.warnings else "no problems found")
        lines = [f"# Data inspection: {verdict}", ""]
        lines += [f"- **{f.severity}** ({f.check}): {f.message}" for f in self.findings] or ["- nothing to report"]
        lines += [
            "",
            "## Splits",
            "",
            "| split | samples | shape | targets | class counts or target mean, std |",
            "|---|---|---|---|---|",
        ]
        for s in self.splits.values():
            if s.class_counts:
                classes = ", ".join(f"{c}: {n}" for c, n in s.class_counts.items())
            elif s.target_mean is not None:
                classes = f"mean {_short(s.target_mean)}, std {_short(s.target_std or [])}"
            else:
                classes = ""
            lines.append(f"| {s.name} | {s.num_samples} | {tuple(s.sample_shape)} | {s.target_kind} | {classes} |")
        lines += ["", "## Statistics per channel/feature", "", "| split | # | mean | std | min | max | NaN | Inf |"]
        lines.append("|---|---|---|---|---|---|---|---|")
        for s in self.splits.values():
            for i in range(min(len(s.mean), max_rows)):
                lines.append(
                    f"| {s.name} | {i} | {s.mean[i]:.4g} | {s.std[i]:.4g} | {s.min[i]:.4g} | {s.max[i]:.4g} | "
                    f"{s.nan_count[i]} | {s.inf_count[i]} |"
                )
            if len(s.mean) > max_rows:
                lines.append(f"| {s.name} | ... {len(s.mean) - max_rows} more | | | | | | |")
        train = self.splits.get("train")
        if train is not None and train.mean:
            lines += ["", f"Normalisation constants (train, per {train.axis}): mean {_short(train.mean, 16)}, "]
            lines[-1] += f"std {_short(train.std, 16)}."
        rows = [(s.name, " = ".join(map(str, g))) for s in self.splits.values() for g in s.duplicate_groups] + [
            (key, f"{i} = {j}") for key, pairs in self.leaks.items() for i, j in pairs
        ]
        lines += _table("Exact duplicates and leaks (indices)", ("split(s)", "identical samples"), rows, max_rows)
        rows = [(", ".join(f"{sp}[{i}] = {lab:g}" for sp, i, lab in g),) for g in self.conflicts]
        lines += _table("Conflicting labels", ("identical inputs, their targets",), rows, max_rows)
        rows = [
            (s.name, o["index"], f"{o['z_norm']:.3g}", f"{o['z_mean']:.3g}")
            for s in self.splits.values()
            for o in s.outliers
        ]
        lines += _table("Outliers (robust z-scores)", ("split", "index", "z of L2 norm", "z of mean"), rows, max_rows)
        rows = [(s.name, i, j, f"{d:.2g}") for s in self.splits.values() for i, j, d in s.near_duplicates or []]
        rows += [(key, i, j, f"{d:.2g}") for key, pairs in self.near_duplicate_leaks.items() for i, j, d in pairs]
        lines += _table("Near duplicates", ("split(s)", "index", "index", "cosine distance"), rows, max_rows)
        return "\n".join(lines) + "\n"

    def figures(self, samples_per_class: int = 8, seed: int = 0) -> dict[str, Any]:
        """Matplotlib figures by name: class balance, samples per class, duplicate/conflict/outlier samples."""
        from lightning_tricks.inspection.figures import report_figures

        return report_figures(self, samples_per_class=samples_per_class, seed=seed)

    def save(self, folder: str | Path, figures: bool = True) -> Path:
        """Write ``report.md``, ``report.json`` and ``<figure>.png`` into ``folder``; return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.md").write_text(self.to_markdown())
        (folder / "report.json").write_text(json.dumps(self.to_dict(), indent=2))
        if figures:
            for name, figure in self.figures().items():
                figure.savefig(folder / f"{name}.png")
        return folder

    def __str__(self) -> str:
        return self.to_markdown()


def findings_of(report: DataReport) -> list[Finding]:
    """The report's sentences, most severe first."""
    out: list[Finding] = []
    for key, pairs in report.leaks.items():
        if pairs:
            a, b = split_pair(key, report.splits)
            leaked = len({j for _, j in pairs})
            out.append(Finding("error", "leakage", f"{leaked} {b} samples are exact copies of {a} samples."))
    for s in report.splits.values():
        for kind, idx in (("NaN", s.samples_with_nan), ("Inf", s.samples_with_inf)):
            if idx:
                out.append(Finding("error", "bad_values", f"{s.name}: {len(idx)} samples contain {kind}."))
    for s in report.splits.values():
        if s.duplicate_groups:
            out.append(
                Finding(
                    "warning",
                    "duplicates",
                    f"{s.name}: {s.num_duplicates} exact duplicate samples ({len(s.duplicate_groups)} groups).",
                )
            )
    if report.conflicts:
        out.append(
            Finding(
                "warning", "conflicts", f"{len(report.conflicts)} groups of identical inputs have different targets."
            )
        )
    reference = report.splits.get("train") or next(iter(report.splits.values()), None)
    for s in report.splits.values():
        if s.num_samples == 0:
            out.append(Finding("warning", "empty", f"{s.name}: no samples."))
            continue
        far = [
            i
            for i, (m, d) in enumerate(zip(s.mean, s.std, strict=True))
            if abs(m) > NORMALISED_MEAN or not NORMALISED_STD[0] <= d <= NORMALISED_STD[1]
        ]
        if far:
            out.append(
                Finding(
                    "warning",
                    "normalisation",
                    f"{s.name}: {len(far)} of {len(s.mean)} {s.axis}s are far from normalised (|mean| > "
                    f"{NORMALISED_MEAN} or std outside {list(NORMALISED_STD)}); normalise with the training "
                    f"split's mean {_short(reference.mean)} and std {_short(reference.std)}.",
                )
            )
        if s.outliers:
            out.append(
                Finding(
                    "warning",
                    "outliers",
                    f"{s.name}: {len(s.outliers)} outlier samples (robust z > "
                    f"{report.settings['outlier_threshold']:g}), e.g. index {s.outliers[0]['index']}.",
                )
            )
        if s.near_duplicates:
            out.append(
                Finding("warning", "near_duplicates", f"{s.name}: {len(s.near_duplicates)} near-duplicate pairs.")
            )
        counts = [c for c in s.class_counts.values() if c > 0]
        if len(counts) > 1 and max(counts) >= IMBALANCE_RATIO * min(counts):
            out.append(
                Finding(
                    "warning",
                    "imbalance",
                    f"{s.name}: classes are imbalanced {max(counts)}:{min(counts)}; consider LastLayerBiasInit.",
                )
            )
        if s.name == "train" and s.constant_features:
            severity = "warning" if s.axis == "feature" else "info"
            out.append(
                Finding(
                    severity,
                    "constant_features",
                    f"train: {len(s.constant_features)} input elements never change (e.g. flat index "
                    f"{s.constant_features[0]}); they carry no information.",
                )
            )
    train = report.splits.get("train")
    if train is not None and train.class_counts:
        for s in report.splits.values():
            unseen = sorted(set(s.class_counts) - set(train.class_counts))
            if s.name != "train" and unseen:
                out.append(Finding("warning", "classes", f"{s.name}: classes {unseen} never occur in train."))
    for key, pairs in report.near_duplicate_leaks.items():
        if pairs:
            out.append(Finding("warning", "near_leakage", f"{key}: {len(pairs)} near-duplicate pairs across splits."))
    return sorted(out, key=lambda f: SEVERITIES.index(f.severity))


def _table(title: str, columns: Sequence[str], rows: list[tuple[Any, ...]], max_rows: int) -> list[str]:
    if not rows:
        return []
    out = ["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows[:max_rows]]
    if len(rows) > max_rows:
        out.append(f"| ... {len(rows) - max_rows} more |" + " |" * (len(columns) - 1))
    return out


def _short(values: list[float], limit: int = 8) -> str:
    text = ", ".join(f"{v:.4g}" for v in values[:limit])
    return f"[{text}{', ...' if len(values) > limit else ''}]"
