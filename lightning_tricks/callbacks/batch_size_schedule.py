"""Recipe 3.6-3.7: grow the batch size during training instead of decaying the learning rate.

Smith et al. (2018), "Don't decay the learning rate, increase the batch size": multiplying the
batch by k has the effect on the noise of SGD that dividing the LR by k has, with k times fewer
optimizer steps per epoch. So where a schedule would decay the LR by 1/k at epoch e, this callback
multiplies the training batch by k at epoch e.

How the Trainer picks the new size up (Lightning 2.6, ``loops/fit_loop.py``): ``FitLoop.setup_data``
runs at the start of every epoch (``on_advance_start``, before ``on_train_epoch_start``) and
rebuilds the training loader, calling the user's ``train_dataloader()``, only when
``trainer.reload_dataloaders_every_n_epochs`` is positive and that many epochs have passed since
the last rebuild. So at the end of the epoch before a milestone the callback sets the new size on
the attribute ``train_dataloader()`` reads (``lightning_setattr``, as Lightning's
``BatchSizeFinder`` does: the module, its hparams, the datamodule) and sets
``reload_dataloaders_every_n_epochs = 1``; at the milestone epoch's start it puts the user's value
back. Loaders are rebuilt at milestones only, not every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.parsing import lightning_getattr, lightning_hasattr, lightning_setattr
from typing_extensions import override

from lightning_tricks.callbacks.lr_batch_scaling import loader_batch_size, scale_trainer_lr
from lightning_tricks.functional.lr_scaling import check_rule, lr_scale_factor
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.media import log_scalars
from lightning_tricks.utilities.state_keys import StatefulCallback


def check_milestones(milestones: Any, owner: str = "BatchSizeSchedule") -> list[int]:
    """Milestones as a list of strictly increasing epochs >= 1, else a ``ValueError`` naming the argument."""
    values = list(milestones) if isinstance(milestones, Sequence) and not isinstance(milestones, str) else None
    if (
        not values
        or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in values)
        or any(b <= a for a, b in pairwise(values))
    ):
        raise ValueError(
            f"{owner}: `milestones` must be a non-empty list of strictly increasing epochs >= 1 (the epochs whose "
            f"start gets the larger batch), got {milestones!r}."
        )
    return values


class BatchSizeSchedule(StatefulCallback):
    """Multiply the per-device training batch size by ``factor`` at the start of each milestone epoch.

    Every rank grows its own batch, so under DDP the global batch follows the schedule too. With
    ``scale_lr`` the LR is multiplied by ``factor`` (``"linear"``) or ``sqrt(factor)`` (``"sqrt"``)
    at each growth, keeping LR / batch constant (recipe 3.7); without it (the default, Smith et al.)
    the LR is left alone and the larger batch plays the role of the LR decay.

    Checkpoint-correct: the current batch size and the number of milestones passed are in
    ``state_dict``; a resumed run starts with the batch size of the epoch it resumes in (and the
    optimizer checkpoint's LR) and never grows twice, whether the checkpoint was saved on
    ``on_train_epoch_end`` (Lightning's default) or earlier (``on_validation_end``, mid-epoch).

    Args:
        milestones: strictly increasing epochs (0-based, >= 1) at whose start the batch grows.
        factor: integer growth per milestone (>= 2).
        attr_name: the attribute ``train_dataloader()`` reads the batch size from, on the
            LightningModule, its ``hparams`` or the datamodule.
        scale_lr: None (keep the LR), ``"linear"`` or ``"sqrt"``.

    ``batch_size`` holds the current per-device batch size, ``passed`` the milestones applied.
    """

    def __init__(
        self,
        milestones: Sequence[int],
        factor: int = 2,
        attr_name: str = "batch_size",
        scale_lr: str | None = None,
    ) -> None:
        self.milestones = check_milestones(milestones)
        self.factor = check_int(factor, "factor", minimum=2, owner="BatchSizeSchedule")
        if not isinstance(attr_name, str) or not attr_name.isidentifier():
            raise ValueError(f"BatchSizeSchedule: `attr_name` must be an attribute name, got {attr_name!r}.")
        self.attr_name = attr_name
        self.scale_lr = (
            None if scale_lr is None else check_rule(scale_lr, owner="BatchSizeSchedule", argument="scale_lr")
        )
        self.batch_size: int | None = None
        self.passed = 0
        self._restored = self._resumed_without_state = False
        self._user_reload: int | None = None

    def milestones_passed(self, epoch: int) -> int:
        """How many milestones are at or before ``epoch``: the growths its batch size has had."""
        return sum(m <= epoch for m in self.milestones)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not lightning_hasattr(pl_module, self.attr_name):
            dm = trainer.datamodule
            where = f"the datamodule ({type(dm).__name__})" if dm is not None else "a datamodule (the fit has none)"
            raise AttributeError(
                f"BatchSizeSchedule: found no `{self.attr_name}` (attr_name={self.attr_name!r}) on the LightningModule "
                f"({type(pl_module).__name__}), its hparams, or {where}. Store the batch size your "
                f"`train_dataloader()` uses in such an attribute, or name it with `attr_name=`."
            )
        value = lightning_getattr(pl_module, self.attr_name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"BatchSizeSchedule: `{self.attr_name}` (attr_name) must hold the batch size, an integer >= 1, "
                f"got {value!r}."
            )
        self._restored = self._resumed_without_state = False

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batch_size = state_dict.get("batch_size")
        self.passed = int(state_dict.get("passed", 0))
        self._restored = self.batch_size is not None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the checkpoint's callback states are loaded, before the fit loop builds its first
        # training loader: a resumed run must build it with the grown size.
        if trainer.ckpt_path is not None and self._restored:
            lightning_setattr(pl_module, self.attr_name, self.batch_size)
            rank_zero_info(
                f"BatchSizeSchedule: resumed with `{self.attr_name}` = {self.batch_size} ({self.passed} of "
                f"{len(self.milestones)} milestones passed)."
            )
            return
        self.batch_size = int(lightning_getattr(pl_module, self.attr_name))
        self.passed = 0
        if trainer.ckpt_path is not None:
            rank_zero_warn(
                f"BatchSizeSchedule: resumed from a checkpoint without BatchSizeSchedule state; the batch starts at "
                f"{self.batch_size} and only milestones after the resumed epoch are applied."
            )
            self._resumed_without_state = True  # milestones are counted from the resumed epoch (on_train_start)
        else:
            rank_zero_info(
                f"BatchSizeSchedule: `{self.attr_name}` {self.batch_size} x {self.factor} at epochs {self.milestones}"
                f"{f', LR scaled ({self.scale_lr})' if self.scale_lr else ''}; the training loader is rebuilt "
                f"at those epochs (trainer.reload_dataloaders_every_n_epochs set to 1 for them)."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The resumed epoch is known from here on (the loops are restored after on_fit_start).
        if self._resumed_without_state:
            self.passed = self.milestones_passed(trainer.current_epoch)  # nothing retroactive
        self._restored = self._resumed_without_state = False

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The loader for this epoch is built: back to the user's reload setting.
        if self._user_reload is None:
            return
        trainer.reload_dataloaders_every_n_epochs = self._user_reload
        self._user_reload = None
        used = loader_batch_size(trainer.train_dataloader)
        if used is not None and used != self.batch_size:
            rank_zero_warn(
                f"BatchSizeSchedule: `{self.attr_name}` is {self.batch_size} but the rebuilt training loader batches "
                f"{used}: does `train_dataloader()` read `{self.attr_name}` (attr_name)?"
            )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before ModelCheckpoint's own on_train_epoch_end (Lightning runs checkpoint callbacks last), so a
        # checkpoint saved now holds the grown state, and the run resumes in the next epoch. A checkpoint
        # saved earlier in the epoch (on_validation_end, every_n_train_steps) holds the state before the
        # growth: Lightning then resumes inside this epoch, with this epoch's batch size, and calls this
        # hook again at its end, which grows then. Growing here is idempotent per epoch.
        self._grow_for(trainer, pl_module, trainer.current_epoch + 1)

    def _grow_for(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """Set the batch size (and LR) that ``epoch`` trains with, if a milestone makes it grow."""
        growths = self.milestones_passed(epoch) - self.passed
        if growths <= 0:
            return
        assert self.batch_size is not None
        k = self.factor**growths
        self.batch_size *= k
        self.passed += growths
        lightning_setattr(pl_module, self.attr_name, self.batch_size)
        if self._user_reload is None:
            self._user_reload = trainer.reload_dataloaders_every_n_epochs
        trainer.reload_dataloaders_every_n_epochs = 1  # rebuild the training loader at the next epoch's start
        metrics = {
            "tricks/batch_size_schedule/batch_size": self.batch_size,
            "tricks/batch_size_schedule/global_batch_size": self.batch_size * trainer.world_size,
        }
        lr_note = ""
        if self.scale_lr:
            lrs = scale_trainer_lr(trainer, lr_scale_factor(k, 1, self.scale_lr))
            metrics["tricks/batch_size_schedule/lr"] = lrs[0][0] if lrs and lrs[0] else float("nan")
            lr_note = f"; LR x {lr_scale_factor(k, 1, self.scale_lr):.4g} ({self.scale_lr})"
        log_scalars(trainer, metrics)
        rank_zero_info(
            f"BatchSizeSchedule: epoch {epoch}: `{self.attr_name}` -> {self.batch_size} per device "
            f"({self.batch_size * trainer.world_size} global){lr_note}."
        )
        self._warn_if_larger_than_data(trainer)

    def _warn_if_larger_than_data(self, trainer: pl.Trainer) -> None:
        assert self.batch_size is not None
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        try:
            size = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            return
        if self.batch_size * trainer.world_size > size:
            rank_zero_warn(
                f"BatchSizeSchedule: the global batch {self.batch_size * trainer.world_size} ({self.batch_size} per "
                f"device x {trainer.world_size}) exceeds the {size} training samples: one step per epoch sees "
                f"the whole set, and growing the batch further changes nothing."
            )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._user_reload is not None:  # the run ended just before a milestone epoch
            trainer.reload_dataloaders_every_n_epochs = self._user_reload
            self._user_reload = None

    @property
    @override
    def state_key(self) -> str:
        # The state is the batch size held in `attr_name`; milestones may be extended when resuming.
        return self._generate_state_key(attr_name=self.attr_name)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "passed": self.passed}
