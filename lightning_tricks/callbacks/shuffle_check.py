"""Recipe 3.5: shuffle the training data every epoch — and never feed it sorted by class."""

from __future__ import annotations

import hashlib
import itertools

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.seed import isolate_rng

from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, train_loader
from lightning_tricks.utilities.arguments import check_int


def _fingerprint(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class ShuffleCheck(RecipeCheck):
    """The training loader must present a new order every epoch, and must not be sorted by label.

    Reads the first ``num_batches`` batches of two passes over the loader (the user's loader, as the
    next two epochs would see it: ``set_epoch`` is called on samplers that have it), compares them,
    and looks at the labels: a loader that repeats its order fails; so does one whose labels come
    sorted (monotone over those batches), even if it changes order between epochs.

    The order is compared as the batch sampler's sample indices where the loader has one (any
    map-style data set), and as fingerprints of the batches otherwise: random augmentation makes the
    batches of an unshuffled loader differ every epoch, and must not pass for shuffling.
    """

    name = "shuffle"

    def __init__(
        self,
        num_batches: int = 4,
        on_failure: str = "raise",
        run_on_resume: bool = False,
        split_batch=None,
        loss_fn=None,
        output_layer: str | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(on_failure, run_on_resume, split_batch, loss_fn, output_layer, task)
        self.num_batches = check_int(num_batches, "num_batches", minimum=2, owner="ShuffleCheck")

    @staticmethod
    def _set_epoch(loader, epoch: int) -> None:
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    def _indices(self, loader, epoch: int) -> list[list[int]] | None:
        """The first batches' sample indices as the batch sampler would give them in ``epoch`` (None: no sampler)."""
        batch_sampler = getattr(loader, "batch_sampler", None)
        if batch_sampler is None:
            return None
        self._set_epoch(loader, epoch)
        return [[int(i) for i in batch] for batch in itertools.islice(batch_sampler, self.num_batches)]

    def _pass(self, loader, pl_module, epoch: int) -> tuple[list[str], list[torch.Tensor]]:
        self._set_epoch(loader, epoch)
        prints, labels = [], []
        for batch in loader:
            inputs, targets = self.adapter.inputs_targets(pl_module, batch)
            # Inputs and targets together: either alone can be constant (all-NaN inputs, one class).
            parts = [x for x in (inputs, targets) if isinstance(x, torch.Tensor)]
            prints.append("".join(_fingerprint(x) for x in parts) or repr(batch))
            labels.append(targets)
            if len(prints) == self.num_batches:
                break
        return prints, labels

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckResult:
        loader = train_loader(trainer, pl_module)
        samplers = [s for s in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)) if s]
        epochs = {id(s): getattr(s, "epoch", None) for s in samplers}
        # Both passes in one isolated block: the second must continue the RNG stream like a real next epoch.
        with isolate_rng():
            first, labels = self._pass(loader, pl_module, trainer.current_epoch)
            second, _ = self._pass(loader, pl_module, trainer.current_epoch + 1)
        with isolate_rng():
            first_indices = self._indices(loader, trainer.current_epoch)
            second_indices = self._indices(loader, trainer.current_epoch + 1)
        for s in samplers:
            if epochs[id(s)] is not None:
                s.epoch = epochs[id(s)]
        repeated = first == second if first_indices is None else first_indices == second_indices
        sorted_by_label = False
        if labels and all(isinstance(y, torch.Tensor) and y.ndim == 1 for y in labels):
            y = torch.cat(labels).float()
            steps = y[1:] - y[:-1]
            # Monotone labels over several batches are sorted data, not chance (p ~ 1/n! for n samples).
            sorted_by_label = torch.unique(y).numel() > 1 and bool((steps >= 0).all() or (steps <= 0).all())
        details = {"batches_compared": len(first), "order_repeats": repeated, "sorted_by_label": sorted_by_label}
        problems = []
        if repeated:
            problems.append(
                "the training loader returns the same batches in the same order every epoch: use "
                "DataLoader(shuffle=True) (Lightning makes it a shuffling DistributedSampler under DDP)"
            )
        if sorted_by_label:
            problems.append(
                f"the first {len(labels)} batches come sorted by label: the model sees one class at a time and "
                f"forgets the others (shuffle, or interleave classes)"
            )
        if problems:
            return CheckResult(self.name, False, "; ".join(problems) + ".", float(repeated), 0.0, details)
        return CheckResult(
            self.name, True, "the order changes between epochs and labels do not come sorted", 0.0, 0.0, details
        )
