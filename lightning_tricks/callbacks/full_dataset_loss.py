"""Recipe 2.3: the loss over the *whole* evaluation set, exact — also under DDP.

Lightning's epoch-level mean is not the data set's mean under DDP: its DistributedSampler pads the
set with repeated samples so every rank has as many (5 samples on 2 ranks: 6 are averaged), and
without padding its integer sample counter floors (Lightning issue #21859). Here each rank
evaluates an exact, unpadded share of the set (samples ``rank, rank + W, ...``), sums
``batch mean loss x batch size`` and the counts in float64, and one all-reduce sum gives
``sum(loss_i) / N`` on every rank. There is no collective inside the loop, so ranks with different
numbers of batches cannot hang.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_tricks.functional.sample_losses import correct_predictions
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.isolation import evaluating
from lightning_tricks.utilities.loaders import stage_loader
from lightning_tricks.utilities.precision import run_precision, to_model
from lightning_tricks.utilities.protocol import ModelAdapter, logits_of
from lightning_tricks.utilities.sharding import shard
from lightning_tricks.utilities.state_keys import StatefulCallback

SPLITS = ("train", "val", "test")


class FullDatasetLoss(StatefulCallback):
    """Log the exact mean loss (and accuracy) over whole data sets every ``every_n_epochs`` epochs.

    Logged through ``LightningModule.log`` as ``tricks/full_loss/<split>`` (and
    ``tricks/full_loss/<split>_acc``), so loggers plot it and ``ModelCheckpoint``/``EarlyStopping``
    can monitor it. ``history`` keeps every evaluation and travels in checkpoints.

    The per-batch loss must be the mean over the batch's samples (the usual reduction): the sum of
    ``mean x size`` over batches is then the sum of the per-sample losses.

    Args:
        splits: which of ``"train"``, ``"val"``, ``"test"`` to evaluate (with the model in eval mode).
        every_n_epochs: evaluation interval, counted in training epochs.
        split_batch, loss_fn, task: overrides of the model protocol.
    """

    def __init__(
        self,
        splits: list[str] | tuple[str, ...] = ("val",),
        every_n_epochs: int = 1,
        split_batch: Any = None,
        loss_fn: Any = None,
        task: str | None = None,
    ) -> None:
        splits = [splits] if isinstance(splits, str) else list(splits)
        if not splits or any(s not in SPLITS for s in splits):
            raise ValueError(f"FullDatasetLoss: `splits` must be a non-empty subset of {SPLITS}, got {splits!r}.")
        self.splits = splits
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", owner="FullDatasetLoss")
        self.adapter = ModelAdapter(split_batch=split_batch, loss_fn=loss_fn, task=task)
        self.history: list[dict[str, float]] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # 0 switches Lightning's validation off (this callback then replaces it): nothing is partial.
        if stage == "fit" and "val" in self.splits and trainer.limit_val_batches not in (1.0, 0, None):
            rank_zero_warn(
                f"FullDatasetLoss: limit_val_batches={trainer.limit_val_batches} makes Lightning's own val "
                f"metrics partial; tricks/full_loss/val still covers the whole validation set."
            )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        entry: dict[str, float] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for split in self.splits:
            result = self.evaluate(trainer, pl_module, split)
            if result is None:
                continue
            loss, accuracy, count = result
            entry[split] = loss
            entry[f"{split}_count"] = count
            # The value is already the same on every rank: the max over ranks is that value, bit for bit (a
            # mean would be a sum and a division, not always exact), and Lightning does not ask DDP users
            # to add `sync_dist=True` to the suite's own metric.
            exact = {"on_step": False, "on_epoch": True, "sync_dist": True, "reduce_fx": "max"}
            pl_module.log(f"tricks/full_loss/{split}", loss, **exact)
            if accuracy is not None:
                entry[f"{split}_acc"] = accuracy
                pl_module.log(f"tricks/full_loss/{split}_acc", accuracy, **exact)
        self.history.append(entry)

    def evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str
    ) -> tuple[float, float | None, int] | None:
        """``(mean loss, accuracy or None, number of samples)`` over the whole ``split``, identical on all ranks."""
        loader = stage_loader(trainer, pl_module, split, "FullDatasetLoss")
        if loader is None:
            return None
        if getattr(loader, "drop_last", False) and not hasattr(getattr(loader, "dataset", None), "__len__"):
            rank_zero_warn(f"FullDatasetLoss: the {split} loader drops its last batch; the loss misses those samples.")
        loader, partitioned = shard(loader, trainer.global_rank, trainer.world_size)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, sample count, correct predictions
        scored = self.adapter.has_loss_function(pl_module)  # else the module's step: a mean loss, no outputs
        task, unscored = None, False
        with evaluating(pl_module), run_precision(trainer):
            for batch in loader:
                batch = to_model(trainer, batch)
                task = task or self.adapter.task_of(pl_module, batch)
                inputs, targets = self.adapter.inputs_targets(pl_module, batch)
                n = len(targets)
                if scored:
                    outputs = pl_module(inputs)
                    loss = self.adapter.loss(pl_module, outputs, targets)
                    totals[2] += correct_predictions(task, outputs, targets) or 0
                else:
                    # The step's batch mean times the batch size: exact when the module's loss is a mean
                    # over samples (reduction="mean"), which is what sum / count assumes.
                    loss = self.adapter.batch_loss(pl_module, batch)
                    outputs = _outputs_or_none(pl_module, inputs)
                    if outputs is None:
                        unscored = True
                    else:
                        totals[2] += correct_predictions(task, outputs, targets) or 0
                totals[0] += float(loss) * n
                totals[1] += n
        if partitioned:
            totals = trainer.strategy.reduce(totals.to(pl_module.device), reduce_op="sum").cpu().double()
        count = int(totals[1])
        if count == 0:
            return None
        accuracy = float(totals[2] / totals[1]) if task != "regression" and not unscored else None
        return float(totals[0] / totals[1]), accuracy, count

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(splits=tuple(self.splits), every_n_epochs=self.every_n_epochs)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def _outputs_or_none(pl_module: pl.LightningModule, inputs: Any) -> Any:
    """``pl_module(inputs)`` for the accuracy, or None where the module is not called on its inputs alone."""
    try:
        outputs = logits_of(pl_module(inputs))
    except Exception:  # e.g. forward(**batch): the accuracy is then not reported, the loss still is
        return None
    return outputs if isinstance(outputs, torch.Tensor) else None
