"""The loader of a split, from wherever the user gave it to Lightning.

Lightning takes a split's data from one of three sources, and so do the callbacks:

1. loaders passed to ``trainer.fit(model, train_dataloaders=..., val_dataloaders=...)`` (or to
   ``validate`` / ``test`` / ``predict``) -- the most common call in Lightning code;
2. a ``LightningDataModule``'s ``<split>_dataloader()`` (``fit(model, datamodule=dm)``);
3. the ``LightningModule``'s own ``<split>_dataloader()``.

The loader returned is the user's own object, not the one Lightning's loops re-create with a
``DistributedSampler``: that sampler pads the data set so that ranks have equal shares, and padded
samples are counted twice in a sum. Callbacks that need exact statistics shard the user's loader
themselves (:mod:`lightning_tricks.utilities.sharding`).

Lightning records the source of each loop's data in ``loop._data_source`` (set by
``trainer.fit`` / ``validate`` / ``test`` / ``predict`` before any hook runs). It has no public
accessor for loaders given to ``fit`` before its loops build their own, so this module is the one
place that reads it; where it is missing (another Lightning release), the datamodule and the module
are asked, as before, and ``tests/test_loader_sources.py`` pins the behaviour on the installed one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden

SPLITS = ("train", "val", "test", "predict")


def _loop_source(trainer: pl.Trainer, split: str) -> Any:
    """Lightning's ``_DataLoaderSource`` for ``split`` in the current stage, or None if it has none."""
    if split == "train":
        loop = trainer.fit_loop
    elif split == "val":
        # fit() evaluates with the fit loop's own validation loop; validate() with its own loop.
        fn = getattr(trainer.state, "fn", None)
        validating = fn is not None and str(getattr(fn, "value", fn)) == "validate"
        loop = trainer.validate_loop if validating else trainer.fit_loop.epoch_loop.val_loop
    elif split == "test":
        loop = trainer.test_loop
    else:
        loop = trainer.predict_loop
    return getattr(loop, "_data_source", None)


def _first(loaders: Any) -> Any:
    """The first loader of what a source holds: a loader, a list/tuple/dict of them, or a CombinedLoader."""
    iterables = getattr(loaders, "iterables", None)  # lightning.pytorch.utilities.CombinedLoader
    if iterables is not None and not hasattr(loaders, "dataset"):
        loaders = iterables
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return _first(loaders[0]) if loaders else None
    return loaders


def _from_hook(owner: Any, split: str) -> Any:
    """``owner.<split>_dataloader()`` if ``owner`` defines it (overrides Lightning's default), else None."""
    name = f"{split}_dataloader"
    if owner is None or not callable(getattr(owner, name, None)):
        return None
    if isinstance(owner, (pl.LightningModule, pl.LightningDataModule)) and not is_overridden(name, owner):
        return None
    return getattr(owner, name)()


def user_loader(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> Any:
    """The loader the user gave for ``split`` (the first one, if several), or None if there is none.

    Args:
        trainer: the running Trainer (any stage: fit, validate, test, predict).
        pl_module: the module it runs.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"predict"``.

    Order: the source Lightning uses for ``split`` in this stage (loaders passed to the stage's call,
    else the datamodule's or the module's hook); then the datamodule's hook, then the module's (a
    test split during ``fit``, whose loop has no loaders yet). A hook is called only if it is
    defined, never Lightning's default that raises.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    source = _loop_source(trainer, split)
    instance = getattr(source, "instance", None)
    if instance is not None and not isinstance(instance, (pl.LightningModule, pl.LightningDataModule)):
        return _first(instance)  # loaders passed to fit/validate/test/predict
    for owner in (instance, trainer.datamodule, pl_module):
        loader = _from_hook(owner, split)
        if loader is not None:
            return _first(loader)
    return None


# The splits each stage sets up: Lightning calls `setup(stage)` only for these, so a datamodule that
# builds its data sets lazily may have no others yet.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def stage_loader(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, owner: str) -> Any:
    """:func:`user_loader`, or None with one info line when ``split`` is not set up in this stage.

    A datamodule that builds its test set in ``setup("test")`` has none during ``fit``; its
    ``test_dataloader()`` then fails (an ``AttributeError`` on a missing data set, typically). For a
    split of the running stage the error is the user's bug, and is raised as is.
    """
    try:
        return user_loader(trainer, pl_module, split)
    except Exception as error:
        fn = getattr(trainer.state, "fn", None)
        stage = str(getattr(fn, "value", fn))
        if split in STAGE_SPLITS.get(stage, ()):
            raise
        rank_zero_info(
            f"{owner}: no {split} data at {stage} time: `{split}_dataloader()` raised {type(error).__name__}: "
            f"{error} (a datamodule that builds it in `setup({split!r})` has not yet); {split} is skipped."
        )
        return None


def require_loader(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, owner: str) -> Any:
    """:func:`user_loader`, or a ``ValueError`` that says where ``owner`` (a callback's name) looked."""
    loader = user_loader(trainer, pl_module, split)
    if loader is None:
        call = {"train": "fit", "val": "fit", "test": "test", "predict": "predict"}[split]
        argument = {"train": "train_dataloaders", "val": "val_dataloaders"}.get(split, "dataloaders")
        raise ValueError(
            f"{owner}: this run has no {split} data. Pass it as `trainer.{call}(model, {argument}=...)`, "
            f"or define `{split}_dataloader()` on your LightningDataModule or LightningModule."
        )
    return loader
