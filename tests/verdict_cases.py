"""The verdict benchmark's cases: clean configurations that must get no FAIL, planted bugs that must.

Shared by ``benchmarks/bench_verdicts.py`` (all of them) and ``tests/test_verdict_benchmark.py`` (a
few). A case is a function returning a :class:`Case`: what ``run_preflight`` needs. Clean cases are
the shipped configurations (``lightning-tricks preflight data=... model=... seed=...``, composed from
the real ``conf/``), the zoo's clean references, the user styles of ``test_user_styles.py`` and the
Hugging Face models of ``test_third_party_models.py``. Bugs are the zoo's (``zoo.py``) and the
ones below, each with the check(s) that must FAIL on it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from zoo import BUGS as ZOO_BUGS
from zoo import CLEAN as ZOO_CLEAN

from lightning_tricks.data import DigitsDataModule, MNIST1DDataModule
from lightning_tricks.models import CNN, MLP
from lightning_tricks.preflight import PreflightReport, run_preflight


@dataclass
class Case:
    """A model and its data: a datamodule, or loaders passed to ``fit``; ``trainer`` extra Trainer arguments."""

    model: pl.LightningModule
    datamodule: pl.LightningDataModule | None = None
    train: Any = None
    val: Any = None
    trainer: dict[str, Any] = field(default_factory=dict)

    def preflight(self) -> PreflightReport:
        return run_preflight(
            self.model, self.datamodule, train_dataloaders=self.train, val_dataloaders=self.val, **self.trainer
        )


# --- clean: the shipped configurations ---------------------------------------------------------------

REFERENCE = [
    ("mlp", "digits"),
    ("mlp", "mnist1d"),
    ("mlp", "synthetic/classification"),
    ("mlp", "synthetic/imbalanced"),
    ("mlp", "synthetic/regression"),
    ("cnn", "digits"),
    ("cnn", "mnist1d"),  # the CNN takes (C, H, W) or (C, L): not the synthetic tabular data
]
SEEDS = (0, 1, 2)


@lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray]:
    return MNIST1DDataModule().load_arrays()  # the generator's own seed is fixed: the same samples for every split


class CachedMNIST1D(MNIST1DDataModule):
    """MNIST-1D generated once per process (a few seconds each time otherwise); the split still follows ``seed``."""

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = _mnist1d_arrays()
        return x.copy(), y.copy()


def shipped(model: str, data: str, seed: int) -> Case:
    """``lightning-tricks preflight model=<model> data=<data> seed=<seed> data.seed=<seed>``, built as it builds it."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from lightning_tricks.callbacks.recipe_check import RecipeCheck
    from lightning_tricks.commands.train import build_data_and_model, instantiate_group

    with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
        cfg = compose(
            "preflight",
            overrides=[f"model={model}", f"data={data}", f"seed={seed}", f"data.seed={seed}",
                       f"paths.output_dir={tempfile.gettempdir()}/bench-verdicts"],
        )  # fmt: skip
    if data == "mnist1d":
        OmegaConf.update(cfg, "data._target_", f"{__name__}.CachedMNIST1D")
    datamodule, module = build_data_and_model(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    assert [c.name for c in callbacks if isinstance(c, RecipeCheck) and c.name != "training_health"] == [
        "init_loss", "gradient_dependency", "overfit_batch", "input_independent_baseline", "shuffle",
    ]  # fmt: skip  # the configured checks are the default ones, so run_preflight's defaults run them
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k == "max_epochs"}
    return Case(module, datamodule, trainer=trainer)


def _styles() -> dict[str, Callable[[], Case]]:
    import test_user_styles as styles

    def build(style: str) -> Case:
        model = styles.MODELS[style]()
        if style == "lazy_datamodule":
            return Case(model, styles.LazyData())
        train, val = styles.loaders(style)
        return Case(model, train=train, val=val)

    names = ("fit_loaders", "dict", "lazy_datamodule", "binary", "regression", "multilabel", "padded_tokens")
    cases = {f"style/{name}": partial(build, name) for name in names}
    cases["style/one_cycle_two_groups"] = lambda: Case(
        styles.OneCycleTwoGroups(), *(None, *styles.loaders("fit_loaders")), trainer={"max_epochs": 5}
    )
    return cases


def _third_party() -> dict[str, Callable[[], Case]]:
    try:
        import test_third_party_models as hf
    except Exception:  # transformers missing: importorskip raises a Skipped exception
        return {}

    def build(name: str, mix: bool = False) -> Case:
        make, kind = hf.MODELS[name]
        return Case(hf.HFClassifier(make, mix=mix), *(None, *hf.data(kind)))

    return {f"hf/{name}": partial(build, name) for name in ("bert", "resnet")}


def clean_cases() -> dict[str, Callable[[], Case]]:
    cases: dict[str, Callable[[], Case]] = {
        f"{model}/{data}/seed{seed}": partial(shipped, model, data, seed) for model, data in REFERENCE for seed in SEEDS
    }
    for name in ("batchnorm_cnn", "token_transformer", "regression_mlp"):  # digits_mlp is mlp/digits above

        def build(name=name) -> Case:
            model, data = ZOO_CLEAN[name]()
            return Case(model, data)

        cases[f"zoo/{name}"] = build
    cases.update(_styles())
    cases.update(_third_party())
    return cases


# --- planted bugs --------------------------------------------------------------------------------------


class TimeMajorView(pl.LightningModule):
    """A GRU over MNIST-1D signals as 10 steps of 4 values; ``view`` where ``transpose`` was meant (time-major)."""

    def __init__(self, bug: bool = True) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 16)  # time-major: (T, B, F)
        self.head = nn.Linear(16, 10)
        self.bug = bug

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.bug:
            seq = x.view(10, b, 4)  # BUG: reinterprets (B, T, F) memory as (T, B, F): mixes samples
        else:
            seq = x.reshape(b, 10, 4).transpose(0, 1)
        _, h = self.gru(seq)
        return self.head(h[-1])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class DropoutAtEval(MLP):
    """``F.dropout(..., training=True)``: dropout stays on in eval mode (should be ``training=self.training``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.net[:-1](x)
        return self.net[-1](F.dropout(hidden, p=0.5, training=True))  # BUG: on at evaluation too


def roll_augment(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """A random horizontal shift "augmentation", applied to every tensor of the batch: the labels too."""
    x, y = (torch.stack(t) for t in zip(*batch, strict=True))
    shift = int(torch.randint(1, 3, ()))
    return [torch.roll(t, shift, dims=-1) for t in (x, y)]  # BUG: for (B,) labels, dim -1 is the batch


class AugmentedLabelsDigits(DigitsDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["train"], batch_size=self.batch_size, shuffle=True, collate_fn=roll_augment)


class FrozenBackboneCNN(CNN):
    """Meant to fine-tune a pretrained backbone's head; the backbone was never loaded, and is frozen at random."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for p in self.net[:-1].parameters():
            p.requires_grad_(False)  # BUG: random features, frozen


def _digits_mlp(cls: type[MLP] = MLP, **kwargs: Any) -> MLP:
    return cls(input_shape=(1, 8, 8), num_outputs=kwargs.pop("num_outputs", 10), **kwargs)


def _hf_mix() -> Case:
    import test_third_party_models as hf

    make, kind = hf.MODELS["resnet"]
    return Case(hf.HFClassifier(make, mix=True), *(None, *hf.data(kind)))


def bug_cases() -> dict[str, tuple[Callable[[], Case], tuple[str, ...]]]:
    """``name -> (build, the checks that must FAIL on it)``; a bug counts as caught when one of them FAILs."""

    def zoo(name: str) -> Case:
        model, data = ZOO_BUGS[name][0]()
        return Case(model, data)

    cases = {f"zoo/{name}": (partial(zoo, name), (check,)) for name, (_, check) in ZOO_BUGS.items()}
    cases.update(
        {
            "time_major_view_instead_of_transpose": (
                lambda: Case(TimeMajorView(), CachedMNIST1D(seed=0)),
                ("gradient_dependency",),
            ),
            "dropout_on_at_eval": (
                lambda: Case(_digits_mlp(DropoutAtEval), DigitsDataModule(seed=0)),
                ("gradient_dependency",),
            ),
            "augmentation_applied_to_labels": (
                lambda: Case(_digits_mlp(), AugmentedLabelsDigits(seed=0)),
                ("input_independent_baseline",),
            ),
            "frozen_random_backbone": (
                lambda: Case(
                    FrozenBackboneCNN(
                        input_shape=(1, 40), num_outputs=10, optimizer=partial(torch.optim.Adam, lr=1e-2)
                    ),
                    CachedMNIST1D(seed=0),
                ),
                ("overfit_batch",),  # random features still carry signal: the baseline passes
            ),
            "wrong_class_count": (
                lambda: Case(_digits_mlp(num_outputs=5), DigitsDataModule(seed=0)),
                ("init_loss",),
            ),
            "hf_resnet_mixes_samples": (_hf_mix, ("gradient_dependency",)),
        }
    )
    return cases
