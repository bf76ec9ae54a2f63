"""Recipe 2.6: a human baseline next to the model's metric, so a number means something."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_tricks.utilities.media import log_scalars


def agreement(first: Sequence[Any], second: Sequence[Any]) -> float:
    """Fraction of samples on which two annotations of the same samples agree (one scored against the other).

    >>> agreement([0, 1, 1, 2], [0, 1, 2, 2])
    0.75
    """
    if len(first) != len(second) or not first:
        raise ValueError(
            f"HumanBaseline: the two annotations must label the same, non-empty list of samples; got "
            f"{len(first)} and {len(second)} labels."
        )
    return sum(a == b for a, b in zip(first, second, strict=True)) / len(first)


class HumanBaseline(Callback):
    """Log a human reference beside a model metric every validation epoch, and compare them at the end.

    Give the number (``value=0.97``) or two annotations of the same samples (``annotations=[a, b]``,
    scored against each other). ``tricks/human_baseline/<metric>`` is logged every validation
    epoch, a constant series W&B draws next to ``<metric>``; at the end of fit ``model_value`` and
    ``value`` say "model vs human" (also in ``lightning-tricks train``'s summary).

    Args:
        metric: the model's metric to compare with (``val/acc``).
        value: the human score, when known.
        annotations: two label lists of the same samples, when the score must be measured.
        higher_is_better: the metric's direction (for the verdict).
    """

    def __init__(
        self,
        metric: str = "val/acc",
        value: float | None = None,
        annotations: list[list[Any]] | None = None,
        higher_is_better: bool = True,
    ) -> None:
        if (value is None) == (annotations is None):
            raise ValueError(
                "HumanBaseline: give exactly one of `value` (a number) or `annotations` (two label lists)."
            )
        if annotations is not None:
            if len(annotations) != 2:
                raise ValueError(f"HumanBaseline: `annotations` must be two label lists, got {len(annotations)}.")
            value = agreement(annotations[0], annotations[1])
        if not isinstance(value, (int, float)):
            raise ValueError(f"HumanBaseline: `value` must be a number, got {value!r}.")
        self.metric, self.value, self.higher_is_better = metric, float(value), higher_is_better
        self.model_value: float | None = None

    @property
    def key(self) -> str:
        return f"tricks/human_baseline/{self.metric}"

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log(self.key, self.value, on_step=False, on_epoch=True)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            return
        self.model_value = float(value)
        log_scalars(trainer, {f"{self.key}/model": self.model_value, f"{self.key}/human": self.value})
        rank_zero_info(f"HumanBaseline: {self.summary()}")

    def summary(self) -> str:
        if self.model_value is None:
            return f"human {self.metric} {self.value:.4g} (no model value yet)"
        better = (self.model_value >= self.value) == self.higher_is_better
        ahead = "model" if better else "human"
        return f"model {self.metric} {self.model_value:.4g} vs human {self.value:.4g}: {ahead} ahead"
