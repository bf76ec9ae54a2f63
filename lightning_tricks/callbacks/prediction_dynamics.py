"""Recipe 2.11: visualise prediction dynamics — the model's predictions on a fixed set of samples, over training."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import default_collate
from typing_extensions import override

from lightning_tricks.callbacks.visualize_batch import looks_like_images
from lightning_tricks.functional.images import to_uint8_image
from lightning_tricks.functional.sample_losses import per_sample_loss
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.isolation import evaluating
from lightning_tricks.utilities.loaders import require_loader
from lightning_tricks.utilities.media import GrowingTable, log_image
from lightning_tricks.utilities.plots import new_figure
from lightning_tricks.utilities.precision import run_precision, to_model
from lightning_tricks.utilities.protocol import ModelAdapter, logits_of
from lightning_tricks.utilities.state_keys import StatefulCallback

TABLE_KEY = "tricks/prediction_dynamics/table"
COLUMNS = ["epoch", "step", "split", "index", "input", "label", "prediction", "p_true", "loss"]


class PredictionDynamics(StatefulCallback):
    """Every ``every_n_epochs`` epochs, record predictions on a fixed, seeded set of samples.

    ``num_samples`` validation samples (and ``num_train_samples`` training samples) are drawn once
    from ``seed`` — the same on every rank and, through the checkpoint, after a resume. For each
    sample and evaluation: label, predicted label (or value, for regression), probability of the
    true class, and loss. Logged as one growing table (an incremental W&B table, or a CSV) to which
    every evaluation adds only its own rows, so its cost is linear in the epochs, with a picture of
    every sample's probability of its true class (or prediction) against the epoch every
    ``plot_every_n_epochs`` evaluations and at the end of training. ``history``
    holds all rows and ``indices`` the chosen samples; both travel in checkpoints.
    """

    def __init__(
        self,
        num_samples: int = 16,
        num_train_samples: int = 0,
        every_n_epochs: int = 1,
        plot_every_n_epochs: int = 10,
        seed: int = 0,
        split_batch: Any = None,
        loss_fn: Any = None,
        task: str | None = None,
    ) -> None:
        self.num_samples = check_int(num_samples, "num_samples", minimum=0, owner="PredictionDynamics")
        self.num_train_samples = check_int(
            num_train_samples, "num_train_samples", minimum=0, owner="PredictionDynamics"
        )
        if num_samples + num_train_samples == 0:
            raise ValueError("PredictionDynamics: `num_samples` + `num_train_samples` must be at least 1.")
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", owner="PredictionDynamics")
        self.plot_every_n_epochs = check_int(plot_every_n_epochs, "plot_every_n_epochs", owner="PredictionDynamics")
        self._plotted_at = 0
        self._table = GrowingTable(TABLE_KEY, COLUMNS)
        self._logged = 0  # rows of `history` already in this fit's table
        self._inputs: dict[tuple[str, int], Any] = {}
        self.seed = seed
        self.adapter = ModelAdapter(split_batch=split_batch, loss_fn=loss_fn, task=task)
        self.indices: dict[str, list[int]] = {}
        self.history: list[dict[str, Any]] = []

    def _dataset(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str):
        return require_loader(trainer, pl_module, split, "PredictionDynamics").dataset

    def _collate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str):
        """The loader's own ``collate_fn`` (a padding collate for variable-length tokens), else torch's default."""
        return getattr(require_loader(trainer, pl_module, split, "PredictionDynamics"), "collate_fn", None)

    def _choose(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Drawn from the seed and the data set's size only: identical on every rank, no collective needed.
        generator = torch.Generator().manual_seed(self.seed)
        for split, n in (("val", self.num_samples), ("train", self.num_train_samples)):
            if n:
                size = len(self._dataset(trainer, pl_module, split))
                self.indices[split] = sorted(torch.randperm(size, generator=generator)[:n].tolist())

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A new table for each fit: its first rows are the whole history (after a resume, the
        # checkpoint's), later evaluations add only theirs.
        self._table = GrowingTable(TABLE_KEY, COLUMNS)
        self._logged = 0

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if not self.indices:
            self._choose(trainer, pl_module)
        task = None
        for split, indices in self.indices.items():
            dataset = self._dataset(trainer, pl_module, split)
            collate = self._collate(trainer, pl_module, split) or default_collate
            batch = to_model(trainer, collate([dataset[i] for i in indices]))
            inputs, targets = self.adapter.inputs_targets(pl_module, batch)
            self._remember_inputs(split, indices, inputs)
            with evaluating(pl_module), run_precision(trainer):
                task = task or self.adapter.task_of(pl_module, batch)
                outputs = logits_of(pl_module(inputs))
                for k, index in enumerate(indices):
                    self.history.append(
                        self._row(trainer, task, split, index, outputs[k : k + 1], targets[k : k + 1], pl_module)
                    )
        self._log(trainer, task)

    def _remember_inputs(self, split: str, indices: list[int], inputs: Any) -> None:
        """What the table shows as the input: a thumbnail for images, the first values otherwise.

        Kept beside the history, not in it: pictures do not belong in checkpoints, and after a resume
        they are rebuilt from the data and the saved indices.
        """
        if not isinstance(inputs, torch.Tensor):
            return
        for k, index in enumerate(indices):
            if (split, index) in self._inputs:
                continue
            sample = inputs[k].detach().float().cpu()
            if looks_like_images(inputs):
                self._inputs[split, index] = to_uint8_image(sample)
            else:
                values = sample.reshape(-1)[:8].tolist()
                self._inputs[split, index] = " ".join(f"{v:.3g}" for v in values) + (
                    " ..." if sample.numel() > 8 else ""
                )

    def _row(self, trainer, task, split, index, output, target, pl_module) -> dict[str, Any]:
        # Per sample: the module's loss function if it has one, else the task's closed form (the step's
        # loss is a batch mean, which cannot be split into samples).
        if self.adapter.has_loss_function(pl_module):
            loss = float(self.adapter.loss(pl_module, output, target))
        else:
            loss = float(per_sample_loss(task, output, target)[0])
        if task == "multiclass" and output.ndim > 2:  # dense (segmentation): (1, C, H, W) against (1, H, W)
            probabilities = torch.softmax(output.float(), 1)[0]  # (C, H, W)
            given = target[0].long()
            label = "x".join(map(str, given.shape)) + " mask"
            prediction = f"{float((probabilities.argmax(0) == given).float().mean()):.1%} of positions right"
            p_true = float(probabilities.gather(0, given.unsqueeze(0)).mean())
        elif task == "multiclass":
            probabilities = torch.softmax(output.float(), -1)[0]
            label = int(target[0])
            prediction, p_true = int(probabilities.argmax()), float(probabilities[label])
        elif task == "binary":
            p = float(torch.sigmoid(output.float().reshape(-1)[0]))
            label = int(target.reshape(-1)[0] > 0.5)
            prediction, p_true = int(p > 0.5), p if label else 1 - p
        else:  # regression, multilabel: values
            label = [round(float(v), 5) for v in target.reshape(-1)]
            prediction, p_true = [round(float(v), 5) for v in output.reshape(-1)], None
            label, prediction = (label[0], prediction[0]) if len(label) == 1 else (str(label), str(prediction))
        return {"epoch": trainer.current_epoch, "step": trainer.global_step, "split": split, "index": index,
                "label": label, "prediction": prediction, "p_true": p_true, "loss": loss}  # fmt: skip

    def _log(self, trainer: pl.Trainer, task: str) -> None:
        rows = [
            [self._inputs.get((r["split"], r["index"]), "") if c == "input" else r[c] for c in COLUMNS]
            for r in self.history[self._logged :]
        ]
        self._table.append(trainer, rows)
        self._logged = len(self.history)
        # The picture costs ~0.1 s to draw: every `plot_every_n_epochs` epochs and at the end of training.
        epochs = len({r["epoch"] for r in self.history})
        if epochs % self.plot_every_n_epochs == 0 or trainer.current_epoch + 1 >= (trainer.max_epochs or 0) > 0:
            self._plot(trainer, task)

    def _plot(self, trainer: pl.Trainer, task: str) -> None:
        log_image(trainer, "tricks/prediction_dynamics/curves", self._figure(task))
        self._plotted_at = len(self.history)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.history and self._plotted_at != len(self.history):  # stopped early, or between plots
            self._plot(trainer, self.adapter.task_of(pl_module))

    def _figure(self, task: str):
        figure = new_figure(6.0, 3.8)
        ax = figure.subplots()
        value = "p_true" if task in ("multiclass", "binary") else "prediction"
        for (split, index), rows in self._by_sample().items():
            values = [r[value] for r in rows]
            if all(isinstance(v, (int, float)) for v in values):
                style = "-" if split == "val" else "--"
                ax.plot([r["epoch"] for r in rows], values, style, marker="o", markersize=3, label=f"{split} #{index}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("probability of the true class" if value == "p_true" else "prediction")
        if value == "p_true":
            ax.set_ylim(-0.02, 1.02)
        ax.set_title("prediction dynamics on fixed samples")
        if len(self._by_sample()) <= 16:
            ax.legend(fontsize=6, ncol=2, loc="best")
        return figure

    def _by_sample(self) -> dict[tuple[str, int], list[dict[str, Any]]]:
        groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for row in self.history:
            groups.setdefault((row["split"], row["index"]), []).append(row)
        return groups

    @property
    @override
    def state_key(self) -> str:
        # Not the seed: a resumed run follows the samples it started with, whatever seed it is given.
        return self._generate_state_key(
            num_samples=self.num_samples,
            num_train_samples=self.num_train_samples,
            every_n_epochs=self.every_n_epochs,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"indices": dict(self.indices), "history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.indices = dict(state_dict.get("indices", {}))
        self.history = list(state_dict.get("history", []))
