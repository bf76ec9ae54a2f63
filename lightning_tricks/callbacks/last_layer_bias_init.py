"""Recipe 2.5: initialise well — set the output layer's bias from the training targets before the first step."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from lightning_tricks.callbacks.recipe_check import first_batches, train_loader
from lightning_tricks.functional.bias_init import TargetStats, bias_from_stats
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.isolation import preserved
from lightning_tricks.utilities.media import log_image, log_scalars
from lightning_tricks.utilities.plots import new_figure
from lightning_tricks.utilities.precision import run_precision, to_model
from lightning_tricks.utilities.protocol import AdapterError, ModelAdapter, check_task
from lightning_tricks.utilities.sharding import shard
from lightning_tricks.utilities.state_keys import StatefulCallback


class LastLayerBiasInit(StatefulCallback):
    """Set the output layer's bias from the training targets so the initial prediction is the prior.

    Streams the training loader (up to ``max_batches``) once, at the start of a fresh fit (before the
    first step; recipe checks trigger it first, so they see the initialised model), and sets:
    ``log p_c`` for softmax classes, ``logit(p)`` per sigmoid output, the mean per regression output.
    Under DDP each rank streams its own share and the sums are all-reduced: every rank sets the same
    bias, from the whole training set. A resumed run keeps its checkpoint's bias.

    Args:
        task: ``"auto"`` (from the module's ``task`` or its loss) or one of the four tasks.
        max_batches: training batches to read (None: all).
        zero_weights: also zero the output weights, so the initial prediction is exactly the prior.
        split_batch, loss_fn, output_layer: overrides of the model protocol.

    After it ran, ``bias`` holds what was set and ``stats`` the target statistics used.
    """

    def __init__(
        self,
        task: str = "auto",
        max_batches: int | None = None,
        zero_weights: bool = False,
        split_batch: Any = None,
        loss_fn: Any = None,
        output_layer: str | None = None,
    ) -> None:
        check_task(task, allow_auto=True)
        check_int(max_batches, "max_batches", owner="LastLayerBiasInit", allow_none=True)
        if not isinstance(zero_weights, bool):
            raise ValueError(f"LastLayerBiasInit: `zero_weights` must be True or False, got {zero_weights!r}.")
        self.task, self.max_batches, self.zero_weights = task, max_batches, zero_weights
        self.adapter = ModelAdapter(split_batch=split_batch, loss_fn=loss_fn, output_layer=output_layer, task=task)
        self.bias: torch.Tensor | None = None
        self.stats: TargetStats | None = None
        self._pending = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._pending = True

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initialise(trainer, pl_module)

    def initialise(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply once per fit, at fit start (after a checkpoint would have been restored), unless resuming.

        Recipe checks call this before they run, so they see the initialised model whatever the order
        of the callbacks.
        """
        if not self._pending:
            return
        self._pending = False
        if trainer.ckpt_path is not None:
            return  # a resumed run keeps the bias it trained, restored from the checkpoint
        self.apply(trainer, pl_module)

    def apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        read: list[Any] = []

        def first_batch() -> Any:  # read once, only if needed: to observe the task, to find the last layer called
            if not read:
                read.append(to_model(trainer, first_batches(train_loader(trainer, pl_module), 1)[0]))
            return read[0]

        # preserved: a forward pass in train mode would move BatchNorm's running statistics.
        with preserved(pl_module), run_precision(trainer):
            task = self.adapter.task_of(pl_module, first_batch)
            name, layer = self.adapter.output_layer_of(pl_module, first_batch)
        bias = getattr(layer, "bias", None)
        if not isinstance(bias, torch.Tensor):
            raise AdapterError(
                f"LastLayerBiasInit: the output layer {name!r} ({type(layer).__name__}) has no bias (built with "
                f"bias=False?); give it one, or name another layer with `output_layer=`."
            )
        stats = self._statistics(trainer, pl_module, task, bias.numel())
        value = bias_from_stats(stats)
        with torch.no_grad():
            bias.copy_(value.to(bias.dtype).reshape(bias.shape))
            if self.zero_weights and isinstance(getattr(layer, "weight", None), torch.Tensor):
                layer.weight.zero_()
        self.bias, self.stats = value.float(), stats
        how = "inferred" if self.task == "auto" else "given"
        rank_zero_info(
            f"LastLayerBiasInit: task {task} ({how}); set {name}.bias from {int(stats.count)} training targets."
            + (" Zeroed its weights." if self.zero_weights else "")
        )
        self._log(trainer, task, stats)
        return value

    def _statistics(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: str, outputs: int) -> TargetStats:
        loader, partitioned = shard(train_loader(trainer, pl_module), trainer.global_rank, trainer.world_size)
        limit = (
            None
            if self.max_batches is None
            else math.ceil(self.max_batches / (trainer.world_size if partitioned else 1))
        )
        stats = TargetStats.empty(task, outputs)
        with isolate_rng():  # reading the data must not move the run's RNG (a shuffling sampler draws from it)
            for i, batch in enumerate(loader):
                if limit is not None and i >= limit:
                    break
                stats.add(self.adapter.inputs_targets(pl_module, batch)[1])
        if partitioned:
            for tensor in stats.tensors():
                tensor.copy_(trainer.strategy.reduce(tensor, reduce_op="sum"))
        if task != "multiclass" and stats.nan_count > 0:
            raise ValueError(
                f"LastLayerBiasInit: {int(stats.nan_count)} training targets are NaN; clean them (or drop those "
                f"samples) before initialising the bias from the data."
            )
        return stats

    def _log(self, trainer: pl.Trainer, task: str, stats: TargetStats) -> None:
        if task == "regression":
            std = stats.variance.sqrt()
            values = {f"tricks/bias_init/mean_{k}": float(m) for k, m in enumerate(stats.mean)}
            values.update({f"tricks/bias_init/std_{k}": float(v) for k, v in enumerate(std)})
            log_scalars(trainer, values)
            far = [k for k, v in enumerate(std.tolist()) if not 0.1 <= v <= 10]
            if far:
                # The bias fixes the offset; a scale far from 1 still makes the initial weights and the
                # learning rate mis-sized for these outputs.
                rank_zero_warn(
                    f"LastLayerBiasInit: regression targets {far} have standard deviation "
                    f"{[round(float(std[k]), 4) for k in far]}, far from 1: consider standardising them "
                    f"(and un-standardising predictions), or the first steps are spent on the scale."
                )
            return
        priors = stats.mean if task != "multiclass" else stats.sums / stats.count
        log_scalars(trainer, {f"tricks/bias_init/prior_{k}": float(p) for k, p in enumerate(priors)})
        figure = new_figure(max(3.0, 0.4 * len(priors) + 1), 3.0)
        ax = figure.subplots()
        ax.bar(range(len(priors)), priors.tolist())  # numeric positions: no categorical-axis guessing
        ax.set_xticks(range(len(priors)))
        ax.set_xlabel("class" if task == "multiclass" else "output")
        ax.set_ylabel("prior (training set)")
        ax.set_title("LastLayerBiasInit: class priors")
        log_image(trainer, "tricks/bias_init/priors", figure)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            task=self.task,
            output_layer=self.adapter.output_layer,
            max_batches=self.max_batches,
            zero_weights=self.zero_weights,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"bias": self.bias}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.bias = state_dict.get("bias")
