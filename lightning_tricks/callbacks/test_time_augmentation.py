"""Recipe 6: test-time augmentation — average the predicted probabilities over fixed views of each input.

At the end of ``trainer.test()`` the callback evaluates the test set once per view (identity
included) and averages the *probabilities* over the views (softmax for multiclass, sigmoid for
binary/multilabel, the plain mean for regression; see :mod:`lightning_tricks.functional.tta`). It
logs, side by side, through ``LightningModule.log`` (so ``trainer.test()`` returns them):

* ``tricks/tta/test_acc`` and ``tricks/tta/test_loss`` — with TTA (``test_mae`` for regression);
* ``tricks/tta/test_acc_no_tta`` and ``tricks/tta/test_loss_no_tta`` — the identity view alone;

and a table ``tricks/tta/test_table`` (each view alone, then "TTA mean") through
:mod:`lightning_tricks.utilities.media`. The loss is the model's own loss applied to the TTA output expressed
as logits (log of the mean probability), so for cross-entropy it is the NLL of the averaged
probabilities, and without TTA it is the loss the model's ``test_step`` computes.

**Exact, also under DDP.** Lightning's DistributedSampler pads the test set with repeated samples,
so per-batch sums from ``on_test_batch_end`` would count some samples twice. Instead, at
``on_test_epoch_end`` each rank evaluates its own exact, unpadded shard of the test set (samples
``rank, rank + W, ...``; :func:`lightning_tricks.utilities.sharding.shard`), sums ``loss x size``, metric and
counts in float64, and one all-reduce per data loader gives ``sum / N`` — the single-process
numbers. There is no collective inside the loop, so uneven shards cannot hang. The price is one
forward pass per sample more than strictly needed: the identity view repeats Lightning's own pass.

**Predict.** After ``trainer.predict()``, :attr:`predictions` holds the TTA-averaged probabilities
(regression: mean outputs) of every sample, in the data set's order, on every rank (DDP shards are
gathered): one tensor for one predict loader, a list for several, like ``trainer.predict``'s return
value. Lightning's own predictions (``predict_step``'s outputs) are left untouched.

**Nothing perturbs the run.** The views are deterministic; evaluation runs inside
:func:`lightning_tricks.utilities.isolation.evaluating` (eval mode, no grad, RNG isolated, every submodule's
mode restored); no hooks are registered. Evaluations cover the whole set even when
``limit_test_batches`` limits Lightning's own loop (a warning says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from lightning_tricks.functional.sample_losses import per_sample_loss
from lightning_tricks.functional.tta import TTAResult, View, batch_totals, mean_probabilities, parse_views
from lightning_tricks.utilities.isolation import evaluating
from lightning_tricks.utilities.media import log_table
from lightning_tricks.utilities.precision import run_precision, to_model
from lightning_tricks.utilities.protocol import INPUT_KEYS, AdapterError, ModelAdapter, logits_of
from lightning_tricks.utilities.sharding import shard, strided

_OWNER = "TestTimeAugmentation"


def default_views(inputs: torch.Tensor) -> list[View]:
    """Identity and a one-step shift each way along every spatial axis of ``inputs``.

    4 shifts for ``(N, C, H, W)`` images, 2 for ``(N, C, L)`` signals. No flips: digits (and most
    signals) are not mirror-symmetric, so a mirrored view is a different, often wrong, input.
    """
    if inputs.ndim == 4:
        specs = ["identity", "shift:1,0", "shift:-1,0", "shift:0,1", "shift:0,-1"]
    elif inputs.ndim == 3:
        specs = ["identity", "shift:1", "shift:-1"]
    else:
        raise ValueError(
            f"{_OWNER}: `views=None` picks 1-step shifts of (N, C, L) signals or (N, C, H, W) images, but the "
            f"inputs have shape {tuple(inputs.shape)}; pass `views=` explicitly."
        )
    return parse_views(specs, owner=_OWNER)


class TestTimeAugmentation(Callback):
    """Average predicted probabilities over augmented views at test and predict time; log with and without.

    Args:
        views: the views to average, identity first (prepended when missing); each a spec such as
            ``"hflip"``, ``"shift:1,0"`` (``"shift:1"`` for signals), ``"rotate:10"``, a one-key mapping
            (``{"shift": [1, 0]}``) or a callable ``x -> x``. ``None`` (the default): identity plus a
            one-step shift each way along every spatial axis, chosen from the inputs' shape.
        split_batch, loss_fn, task: overrides of the model protocol (:mod:`lightning_tricks.utilities.protocol`).

    After ``trainer.test()``, :attr:`result` is a :class:`~lightning_tricks.functional.tta.TTAResult`
    (with :attr:`results` holding one per test loader); after ``trainer.predict()``,
    :attr:`predictions` holds the averaged probabilities in data-set order.
    """

    __test__ = False  # a class named Test* is not a pytest test class

    def __init__(
        self,
        views: Sequence[Any] | None = None,
        split_batch: Any = None,
        loss_fn: Any = None,
        task: str | None = None,
    ) -> None:
        self.views: list[View] | None = None if views is None else parse_views(views, "views", owner=_OWNER)
        self.adapter = ModelAdapter(split_batch=split_batch, loss_fn=loss_fn, task=task)
        self.results: list[TTAResult | None] = []
        self.predictions: torch.Tensor | list[torch.Tensor] | None = None

    @property
    def result(self) -> TTAResult | None:
        """The result on the (first) test loader of the last ``trainer.test()``."""
        return self.results[0] if self.results else None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("test", "predict"):
            return
        if stage == "test":
            if trainer.limit_test_batches not in (1.0, None):
                rank_zero_warn(
                    f"{_OWNER}: limit_test_batches={trainer.limit_test_batches} makes Lightning's own test metrics "
                    f"partial; tricks/tta/* cover the whole test set."
                )

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = _loaders(trainer.test_dataloaders)
        self.results = [self.evaluate(trainer, pl_module, loader) for loader in loaders]
        for index, result in enumerate(self.results):
            if result is None:
                continue
            suffix = f"/dataloader_idx_{index}" if len(loaders) > 1 else ""
            name = result.metric_name
            metrics = {
                f"test_{name}": result.metric,
                f"test_{name}_no_tta": result.metric_no_tta,
                "test_loss": result.loss,
                "test_loss_no_tta": result.loss_no_tta,
            }
            for key, value in metrics.items():
                # The values are already global and bit-identical on every rank; syncing them with `max`
                # changes no bit and spares DDP users Lightning's "use sync_dist=True" warning.
                pl_module.log(f"tricks/tta/{key}{suffix}", value, on_step=False, on_epoch=True, sync_dist=True,
                              reduce_fx="max", add_dataloader_idx=False)  # fmt: skip
            log_table(trainer, f"tricks/tta/test_table{suffix}", ["view", name, "loss"], result.rows())
            rank_zero_info(
                f"{_OWNER}: test {name} {result.metric_no_tta:.4f} -> {result.metric:.4f}, loss "
                f"{result.loss_no_tta:.4f} -> {result.loss:.4f} with {len(result.views)} views over "
                f"{result.count} samples{f' ({suffix[1:]})' if suffix else ''}."
            )

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        predictions = [self.predict(trainer, pl_module, loader) for loader in _loaders(trainer.predict_dataloaders)]
        self.predictions = predictions[0] if len(predictions) == 1 else predictions

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any) -> TTAResult | None:
        """Exact per-view and TTA means over all of ``loader``'s samples, identical on every rank."""
        loader, partitioned = shard(loader, trainer.global_rank, trainer.world_size)
        task = None
        totals: torch.Tensor | None = None
        views: list[View] | None = self.views
        with evaluating(pl_module), run_precision(trainer):
            for batch in loader:
                batch = to_model(trainer, batch)
                task = task or self.adapter.task_of(pl_module, batch)
                inputs, targets = self.adapter.inputs_targets(pl_module, batch)
                views = views or default_views(_tensor(inputs))
                outputs = self._outputs(pl_module, inputs, views)
                batch_sum = batch_totals(outputs, targets, task, self._loss(pl_module, task))
                totals = batch_sum if totals is None else totals + batch_sum
        if partitioned:
            # Every rank reaches this (an empty shard included): the shape is fixed by the view count.
            views = views or self._views_for_empty_shard(trainer, pl_module, loader)
            local = totals if totals is not None else torch.zeros(len(views) + 1, 3, dtype=torch.float64)
            totals = trainer.strategy.reduce(local.to(pl_module.device), reduce_op="sum").cpu().double()
        if totals is None or views is None:
            return None
        return TTAResult.from_totals(totals, [v.name for v in views], task)

    def predict(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any) -> torch.Tensor | None:
        """TTA-averaged probabilities of every sample of ``loader``, in data-set order, on every rank."""
        dataset = getattr(loader, "dataset", None)
        mapped = (
            isinstance(loader, DataLoader) and hasattr(dataset, "__len__") and not isinstance(dataset, IterableDataset)
        )
        world = trainer.world_size if mapped else 1  # an iterable data set: every rank predicts all of it
        if mapped:  # this rank's strided share, in data-set order whatever the loader's sampler
            loader, _ = strided(loader, trainer.global_rank, world)
        task = None
        chunks: list[torch.Tensor] = []
        views = self.views
        with evaluating(pl_module), run_precision(trainer):
            for batch in loader:
                batch = to_model(trainer, batch)
                task = task or self.adapter.task_of(pl_module, batch)  # batches without targets need `task=`
                inputs = self._inputs(pl_module, batch)
                views = views or default_views(_tensor(inputs))
                chunks.append(mean_probabilities(self._outputs(pl_module, inputs, views), task).cpu())
        local = torch.cat(chunks) if chunks else None
        if world == 1:
            return local
        # Shards differ in length by at most one: pad to the longest, gather, interleave, trim.
        total = len(dataset)
        longest = -(-total // world)
        if local is None:  # an empty shard still joins the collective, with the right row shape
            local = self._empty_prediction(trainer, pl_module, loader, task)
        padded = torch.zeros(longest, *local.shape[1:], dtype=local.dtype)
        padded[: len(local)] = local
        gathered = trainer.strategy.all_gather(padded.to(pl_module.device)).cpu()  # (W, longest, ...)
        return gathered.transpose(0, 1).reshape(world * longest, *local.shape[1:])[:total]

    def _inputs(self, pl_module: pl.LightningModule, batch: Any) -> Any:
        """The inputs of a batch that may have no targets (predict): a tensor or a 1-tuple is all inputs."""
        if isinstance(batch, torch.Tensor):
            return batch
        if isinstance(batch, (tuple, list)) and len(batch) == 1:
            return batch[0]
        if isinstance(batch, Mapping) and self.adapter.split_batch is None and not hasattr(pl_module, "split_batch"):
            key = next((k for k in INPUT_KEYS if k in batch), None)
            if key is not None:
                return batch[key]
        return self.adapter.inputs_targets(pl_module, batch)[0]

    def _loss(self, pl_module: pl.LightningModule, task: str) -> Any:
        """The batch-mean loss of one view's outputs: the module's loss function, else the task's closed form
        (the module's own step cannot be run on a view: it computes its loss from the batch, not from outputs)."""
        if self.adapter.has_loss_function(pl_module):
            return lambda o, t: self.adapter.loss(pl_module, o, t)
        return lambda o, t: per_sample_loss(task, o, t).mean()

    @staticmethod
    def _outputs(pl_module: pl.LightningModule, inputs: Any, views: list[View]) -> list[torch.Tensor]:
        x = _tensor(inputs)
        outputs = []
        for view in views:
            try:
                viewed = view(x)
            except (ValueError, RuntimeError) as err:
                raise ValueError(
                    f"{_OWNER}: the view {view.name!r} (from `views`) does not apply to inputs of shape "
                    f"{tuple(x.shape)}: {err}"
                ) from err
            outputs.append(logits_of(pl_module(viewed)))
        return outputs

    def _views_for_empty_shard(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any) -> list[View]:
        """``views=None`` on a rank whose shard is empty: pick the views from the data set's first sample."""
        inputs, _ = self.adapter.inputs_targets(pl_module, next(iter(_first_sample_loader(loader))))
        return default_views(_tensor(inputs))

    def _empty_prediction(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any, task: str
    ) -> torch.Tensor:
        """A ``(0, ...)`` tensor shaped like this model's predictions, for a rank with nothing to predict."""
        batch = to_model(trainer, next(iter(_first_sample_loader(loader))))
        inputs = self._inputs(pl_module, batch)
        with evaluating(pl_module), run_precision(trainer):
            row = mean_probabilities([pl_module(_tensor(inputs))], task).cpu()
        return row[:0]


def _tensor(inputs: Any) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise AdapterError(
            f"{_OWNER}: views transform a tensor of inputs, but the batch's inputs are a {type(inputs).__name__}; "
            f"pass `split_batch=` returning (tensor inputs, targets)."
        )
    return inputs


def _loaders(iterables: Any) -> list[Any]:
    """The loaders of ``trainer.test_dataloaders`` / ``predict_dataloaders`` (one, a list, or a dict)."""
    if iterables is None:
        return []
    if isinstance(iterables, Mapping):
        return list(iterables.values())
    if isinstance(iterables, (list, tuple)):
        return list(iterables)
    return [iterables]


def _first_sample_loader(loader: DataLoader) -> DataLoader:
    return DataLoader(loader.dataset, batch_size=1, sampler=[0], collate_fn=loader.collate_fn)
