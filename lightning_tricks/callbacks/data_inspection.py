"""Recipe 1: become one with the data — a report on the data at fit start, the data sorted by loss after training.

At fit start, :func:`lightning_tricks.inspection.inspect_data` looks at the data before any step is
taken (balance, duplicates, leakage, NaN, outliers). After training, every sample of the chosen
splits is scored by the trained model and sorted by loss: the top of the list is where label
errors, odd samples and preprocessing bugs are (the model learnt the clean majority and disagrees
with them). Each sample is evaluated exactly once across ranks — rank ``r`` takes samples
``r, r + W, ...`` in data set order, unpadded — and the per-sample rows, keyed by their global
index, are gathered to every rank, so every rank holds the same ranking.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, IterableDataset, default_collate
from typing_extensions import override

from lightning_tricks.callbacks.visualize_batch import looks_like_images
from lightning_tricks.functional.images import captioned_grid, to_uint8_image
from lightning_tricks.functional.sample_losses import (
    margin,
    per_sample_loss,
    predicted_label,
    predicted_probability,
    probability_of_label,
    rank_by_loss,
)
from lightning_tricks.inspection import gather_objects
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.isolation import evaluating
from lightning_tricks.utilities.loaders import stage_loader
from lightning_tricks.utilities.media import log_image, log_scalars, log_table, run_dir
from lightning_tricks.utilities.precision import run_precision, to_model
from lightning_tricks.utilities.protocol import ModelAdapter, logits_of
from lightning_tricks.utilities.sharding import strided
from lightning_tricks.utilities.state_keys import StatefulCallback

SPLITS = ("train", "val", "test")
TABLE_ROWS = ("top_k", "all")
#: Columns of the full per-sample table, one row per sample, sorted by global index.
COLUMNS = ("index", "label", "prediction", "p_given", "p_predicted", "loss", "margin",
           "input_mean", "input_std", "input_norm")  # fmt: skip
#: Columns of the logged table (highest loss first); ``input`` is a picture or the first values.
TABLE_COLUMNS = ("rank", "index", "input", "label", "prediction", "p_given", "loss", "margin")


@dataclass
class SplitRanking:
    """One split scored by the model: every sample's row, and the samples with the highest loss.

    ``columns[c][i]`` is column ``c`` of the sample with global index ``columns["index"][i]``
    (sorted by index, each index once). ``top`` holds the global indices of the ``top_k`` highest
    losses, highest first; ``path`` the full table written (on rank zero).
    """

    split: str
    epoch: int
    step: int
    columns: dict[str, list[Any]]
    top: list[int]
    path: str | None = None
    _position: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def count(self) -> int:
        return len(self.columns["index"])

    @property
    def mean_loss(self) -> float:
        losses = self.columns["loss"]
        return math.fsum(losses) / len(losses) if losses else float("nan")

    def row(self, index: int) -> dict[str, Any]:
        """The row of the sample with global index ``index``."""
        if not self._position:
            self._position = {int(i): k for k, i in enumerate(self.columns["index"])}
        k = self._position[int(index)]
        return {c: values[k] for c, values in self.columns.items()}

    def top_rows(self) -> list[dict[str, Any]]:
        return [self.row(i) for i in self.top]

    def summary(self) -> dict[str, Any]:
        """What a checkpoint keeps: small, no per-sample columns."""
        return {"split": self.split, "epoch": self.epoch, "step": self.step, "count": self.count,
                "mean_loss": self.mean_loss, "top": list(self.top),
                "top_losses": [self.row(i)["loss"] for i in self.top], "path": self.path}  # fmt: skip


def _cells(values: torch.Tensor) -> torch.Tensor | list[Any]:
    """A column's cells for one batch ``(n, ...)``: the ``(n,)`` values themselves when each sample has
    one, else each sample's values joined by spaces (a CSV keeps one column)."""
    values = values.detach().cpu()
    n = len(values)
    if values.numel() == n:
        return values.reshape(n)
    rows = values.reshape(n, -1).tolist()
    return [" ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) for row in rows]


def _joined(parts: list[Any]) -> torch.Tensor | list[Any]:
    """Batches (or ranks) of one column in order: one tensor when every part is a tensor of one
    dtype, else one list of cells. Empty parts (a rank given no sample) are left out."""
    parts = [p for p in parts if len(p)]
    if parts and all(isinstance(p, torch.Tensor) for p in parts) and len({p.dtype for p in parts}) == 1:
        return torch.cat(parts)
    return [v for p in parts for v in (p.tolist() if isinstance(p, torch.Tensor) else p)]


class DataInspection(StatefulCallback):
    """Inspect the data at fit start; after training, sort every sample of ``splits`` by loss.

    After training (and every ``every_n_epochs`` epochs, if set) every sample is scored in eval mode
    without gradients, RNG isolated, modes restored. Per sample: global index, label, prediction,
    ``p_given`` (probability of the given label), ``p_predicted``, loss, margin, and the input's
    mean, std and L2 norm. Logged per split under ``tricks/data_inspection/<split>/``:

    * ``top_loss``: a table (W&B table, sortable and filterable; CSV with PNGs otherwise) of the
      ``top_k`` highest-loss samples — likely label errors — with the input as a picture (images)
      or its first values; every sample with ``log_table_rows="all"``;
    * ``top_loss_grid``: the top-k images with ``label -> prediction, loss`` captions (images only);
    * ``mean_loss`` (a scalar), and the full table as ``<run dir>/data_inspection/<split>_step<S>.csv``
      (and ``.parquet`` when pyarrow is installed).

    ``ranking`` holds the last :class:`SplitRanking` per split. The per-sample loss is the task's
    closed form (:func:`~lightning_tricks.functional.sample_losses.per_sample_loss`); pass
    ``loss_fn(outputs, targets) -> (N,)`` for another one. Splits need map-style data sets (with a
    length), so a sample has an index.

    At fit start (``at_fit_start``), :func:`~lightning_tricks.inspection.inspect_data` runs on the
    data module (or the module's loaders); its markdown and figures are saved under
    ``<run dir>/data_inspection/report`` and its figures logged; ``report`` keeps it, and errors in it
    are warned about. A resumed run does not inspect again.
    """

    def __init__(
        self,
        splits: list[str] | tuple[str, ...] = ("train", "val"),
        top_k: int = 32,
        at_fit_start: bool = True,
        at_fit_end: bool = True,
        every_n_epochs: int | None = None,
        log_table_rows: str = "top_k",
        split_batch: Any = None,
        loss_fn: Any = None,
        task: str | None = None,
    ) -> None:
        splits = [splits] if isinstance(splits, str) else list(splits)
        if not splits or any(s not in SPLITS for s in splits):
            raise ValueError(f"DataInspection: `splits` must be a non-empty subset of {SPLITS}, got {splits!r}.")
        for name, value in (("at_fit_start", at_fit_start), ("at_fit_end", at_fit_end)):
            if not isinstance(value, bool):
                raise ValueError(f"DataInspection: `{name}` must be True or False, got {value!r}.")
        if log_table_rows not in TABLE_ROWS:
            raise ValueError(f"DataInspection: `log_table_rows` must be one of {TABLE_ROWS}, got {log_table_rows!r}.")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(
                f"DataInspection: `loss_fn` must be callable as loss_fn(outputs, targets), got {loss_fn!r}."
            )
        self.splits = splits
        self.top_k = check_int(top_k, "top_k", owner="DataInspection")
        self.at_fit_start, self.at_fit_end = at_fit_start, at_fit_end
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", owner="DataInspection", allow_none=True)
        self.log_table_rows = log_table_rows
        self.loss_fn = loss_fn
        # The per-sample loss is ours, not the module's (whose batch mean hides the samples).
        self.adapter = ModelAdapter(split_batch=split_batch, task=task)
        self.ranking: dict[str, SplitRanking] = {}
        self.summaries: dict[str, dict[str, Any]] = {}
        self.report: Any = None
        self.reported = False
        self._last_step: int | None = None

    # ---- fit start: the report on the data ---------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Checkpoint state is restored before this hook: a resumed run has `reported` set already.
        if not self.at_fit_start or self.reported or trainer.ckpt_path is not None:
            return
        self.reported = True
        # Looked up at call time (not imported with this module), so a test can stand in for the report.
        from lightning_tricks.inspection import inspect_data

        # The loaders this run already has, not the datamodule itself: inspect_data would call its
        # prepare_data and setup again, which Lightning has done once for this fit.
        loaders = {split: self._loader(trainer, pl_module, split) for split in SPLITS}
        source = {split: loader for split, loader in loaders.items() if loader is not None}
        with isolate_rng():  # reading the data (a shuffling sampler, random transforms) must not move the run's RNG
            self.report = inspect_data(
                source,
                split_batch=self.adapter.split_batch,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                all_gather=gather_objects,
            )
        if trainer.is_global_zero:
            folder = Path(self.report.save(run_dir(trainer) / "data_inspection" / "report", figures=False))
            for name, figure in self.report.figures().items():  # drawn once: saved beside the report, and logged
                figure.savefig(folder / f"{name}.png")
                log_image(trainer, f"tricks/data_inspection/report/{name}", figure)
            rank_zero_info(f"DataInspection: data report saved to {folder}.")
        if self.report.has_errors:
            rank_zero_warn(f"DataInspection: the data report found errors:\n{self.report.to_markdown()}")

    # ---- during and after training: the data sorted by loss ----------------------------------------

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.rank(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_fit_end and self._last_step != trainer.global_step:  # not twice for the same weights
            self.rank(trainer, pl_module)

    def rank(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, SplitRanking]:
        """Score every sample of every split, log the highest losses and save the full tables."""
        self._last_step = trainer.global_step
        for split in self.splits:
            ranking = self.evaluate(trainer, pl_module, split)
            if ranking is None:
                continue
            self.ranking[split] = ranking
            self._log(trainer, pl_module, ranking)
            self.summaries[split] = ranking.summary()
        return self.ranking

    def _loader(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> DataLoader | None:
        return stage_loader(trainer, pl_module, split, "DataInspection")

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> SplitRanking | None:
        """Every sample of ``split`` scored once across ranks; the same result on every rank."""
        loader = self._loader(trainer, pl_module, split)
        dataset = getattr(loader, "dataset", None)
        if dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            if loader is not None:
                rank_zero_warn(f"DataInspection: the {split} data set has no length (iterable?); not ranked.")
            return None
        # Data set order, not the loader's (a training loader shuffles): position k is sample indices[k].
        ordered, indices = strided(loader, trainer.global_rank, trainer.world_size)
        task = None
        # Each column is kept per batch, as a tensor (one value a sample) or a list of text cells, and
        # turned into Python lists once at the end: per-sample Python work cost as much as the forward.
        local: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        done = 0
        with evaluating(pl_module), run_precision(trainer):
            for batch in ordered:
                batch = to_model(trainer, batch)
                task = task or self.adapter.task_of(pl_module, batch)
                inputs, targets = self.adapter.inputs_targets(pl_module, batch)
                outputs = logits_of(pl_module(inputs))
                n = len(targets)
                local["index"].append(torch.as_tensor(indices[done : done + n], dtype=torch.long))
                done += n
                for name, values in self._columns(task, inputs, outputs, targets).items():
                    local[name].append(values)
        # Collective on every rank, outside the loop: ranks with different batch counts cannot hang.
        parts = gather_objects({c: _joined(values) for c, values in local.items()})
        merged = {c: _joined([part[c] for part in parts]) for c in COLUMNS}
        if not len(merged["index"]):
            return None
        if len(parts) > 1:  # rank r holds samples r, r + W, ...: back into data set order
            order = torch.argsort(merged["index"], stable=True)
            merged = {c: v[order] if isinstance(v, torch.Tensor) else [v[k] for k in order.tolist()]
                      for c, v in merged.items()}  # fmt: skip
        top = rank_by_loss(merged["loss"], self.top_k)
        columns = {c: v.tolist() if isinstance(v, torch.Tensor) else v for c, v in merged.items()}
        return SplitRanking(split, trainer.current_epoch, trainer.global_step, columns,
                            [columns["index"][k] for k in top.tolist()])  # fmt: skip

    def _columns(self, task: str, inputs: Any, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """One batch's columns: a CPU tensor of ``n`` values each, or ``n`` text cells (several values a sample)."""
        n = len(targets)
        if self.loss_fn is not None:
            losses = self.loss_fn(outputs, targets)
            if not isinstance(losses, torch.Tensor) or losses.numel() != n:
                raise ValueError(
                    f"DataInspection: `loss_fn` must return one loss per sample (reduction='none'), a tensor of "
                    f"{n} values; got {getattr(losses, 'shape', losses)!r}."
                )
        else:
            losses = per_sample_loss(task, outputs, targets)
        nan = torch.full((n,), float("nan"), dtype=torch.float64)
        columns: dict[str, Any] = {
            "label": _cells(targets.reshape(n, -1) if task == "binary" else targets),
            "prediction": _cells(predicted_label(task, outputs)),
            "loss": losses.detach().reshape(n).cpu().double(),
        }
        for name, values in (
            ("p_given", probability_of_label(task, outputs, targets)),
            ("p_predicted", predicted_probability(task, outputs)),
            ("margin", margin(task, outputs, targets)),
        ):
            columns[name] = nan if values is None else values.detach().reshape(n).cpu().double()
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
            # On the CPU first: float64 is not available on every accelerator (MPS).
            flat = inputs.detach().reshape(n, -1).cpu().double()
            columns["input_mean"] = flat.mean(-1)
            columns["input_std"] = flat.std(-1, correction=0)
            columns["input_norm"] = torch.linalg.vector_norm(flat, dim=-1)
        else:  # token ids, dicts: no meaningful statistics
            columns.update(input_mean=nan, input_std=nan, input_norm=nan)
        return columns

    # ---- logging (rank zero writes; media functions guard themselves) -------------------------------

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ranking: SplitRanking) -> None:
        prefix = f"tricks/data_inspection/{ranking.split}"
        log_scalars(trainer, {f"{prefix}/mean_loss": ranking.mean_loss})
        if not trainer.is_global_zero:
            return
        ranking.path = str(self._save_full_table(trainer, ranking))
        shown = ranking.top
        if self.log_table_rows == "all":
            order = rank_by_loss(torch.tensor(ranking.columns["loss"], dtype=torch.float64)).tolist()
            shown = [ranking.columns["index"][k] for k in order]
        inputs = self._inputs(trainer, pl_module, ranking.split, shown)
        rows = []
        for k, index in enumerate(shown):
            row = ranking.row(index)
            rows.append([k + 1, index, inputs[k], *(row[c] for c in TABLE_COLUMNS[3:])])
        log_table(trainer, f"{prefix}/top_loss", TABLE_COLUMNS, rows)
        top = ranking.top_rows()
        pictures = inputs[: len(top)]
        if pictures and all(not isinstance(p, str) for p in pictures):
            log_image(trainer, f"{prefix}/top_loss_grid", self._grid(ranking.split, top, pictures))
        worst = ", ".join(f"#{r['index']} ({r['loss']:.3g})" for r in top[:5])
        rank_zero_info(
            f"DataInspection: {ranking.split}: {ranking.count} samples, mean loss {ranking.mean_loss:.4g}; "
            f"highest losses {worst}; full table in {ranking.path}."
        )

    def _inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, indices: list[int]) -> list:
        """The table's ``input`` cells: a uint8 picture for images, the first values otherwise."""
        loader = self._loader(trainer, pl_module, split)
        if not indices:
            return []
        collate = getattr(loader, "collate_fn", None) or default_collate  # the loader's own (padding) collate
        inputs, _ = self.adapter.inputs_targets(pl_module, collate([loader.dataset[i] for i in indices]))
        if not isinstance(inputs, torch.Tensor):
            return [""] * len(indices)
        inputs = inputs.detach().float().cpu()
        if looks_like_images(inputs):
            return [to_uint8_image(x) for x in inputs]
        cells = []
        for x in inputs:
            values = x.reshape(-1)
            cells.append(" ".join(f"{v:.3g}" for v in values[:8].tolist()) + (" ..." if values.numel() > 8 else ""))
        return cells

    def _grid(self, split: str, rows: list[dict[str, Any]], pictures: list) -> Any:
        """The top-k pictures, captioned ``#index: label -> prediction`` and ``loss``."""
        captions = [f"#{row['index']}: {row['label']} -> {row['prediction']}\nloss {row['loss']:.2f}" for row in rows]
        return captioned_grid(pictures, captions, title=f"{split}: highest losses (label -> prediction)")

    def _save_full_table(self, trainer: pl.Trainer, ranking: SplitRanking) -> Path:
        folder = run_dir(trainer) / "data_inspection"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{ranking.split}_step{ranking.step}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(zip(*(ranking.columns[c] for c in COLUMNS), strict=True))
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return path
        # Mixed cells (numbers or "0 1 1" strings) become strings so each column has one type.
        data = {c: ranking.columns[c] if c not in ("label", "prediction") or self._uniform(ranking.columns[c])
                else [str(v) for v in ranking.columns[c]] for c in COLUMNS}  # fmt: skip
        pq.write_table(pa.table(data), path.with_suffix(".parquet"))
        return path

    @staticmethod
    def _uniform(values: list[Any]) -> bool:
        return len({type(v) for v in values}) <= 1

    # ---- checkpoints ---------------------------------------------------------------------------------

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            splits=tuple(self.splits),
            at_fit_start=self.at_fit_start,
            at_fit_end=self.at_fit_end,
            every_n_epochs=self.every_n_epochs,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"reported": self.reported, "summaries": dict(self.summaries), "last_step": self._last_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reported = bool(state_dict.get("reported", False))
        self.summaries = dict(state_dict.get("summaries", {}))
        self._last_step = state_dict.get("last_step")
