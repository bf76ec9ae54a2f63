"""Every callback on Lightning code written the way users write it, not the way we wrote ours.

The modules here follow Lightning's docs and tutorials: no ``criterion``, no ``task``, no mixin; the
loss is computed inline in ``training_step``; loaders are passed to ``trainer.fit``; batches may be
dicts with extra fields; a regression or 1-logit binary model squeezes its output in its step; a
datamodule builds its data sets lazily in ``setup(stage)``.

Each cell of the matrix (callback x style) runs a real fit and asserts that the callback worked (its
result or record exists). Where a closed form exists the number is compared with it: the exact
mean loss (sum / count) and the loss at init (ln C). A diagnostic must not change the run: the final
weights with and without it are bit-identical.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_tricks import (
    ActivationStats,
    DataInspection,
    DropoutBatchNormLint,
    FirstLayerFilters,
    FullDatasetLoss,
    GradientDependencyProbe,
    InitLossCheck,
    InputIndependentBaseline,
    LastLayerBiasInit,
    LRRangeTest,
    OverfitBatchCheck,
    PredictionDynamics,
    SeedEverything,
    ShuffleCheck,
    TrainingHealthCheck,
    VisualizeBatch,
)

N, D, C = 192, 16, 4
VAL = 64  # validation samples (the rest of N after 128 training ones); the DDP test makes it odd


def blobs(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``C`` Gaussian blobs in ``D`` dimensions: an easy, clean classification problem."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    centres = torch.randn(C, D, generator=g) * 2
    return centres[y] + torch.randn(n, D, generator=g), y


class DictDataset(Dataset):
    """Items as Hugging Face users have them: a dict with the inputs, the label and an id."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"features": self.x[i], "labels": self.y[i], "id": i}


# ------------------------------------------------------------------------------------------ the modules
class InlineLoss(pl.LightningModule):
    """The Lightning tutorial's classifier: ``F.cross_entropy`` inside the steps, nothing else declared."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class DictBatches(InlineLoss):
    """Dict batches with an extra field, and a step that returns ``{"loss": ...}``."""

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        loss = F.cross_entropy(self(batch["features"]), batch["labels"])
        self.log("train_loss", loss)
        return {"loss": loss}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["features"]), batch["labels"]))


class SqueezedRegression(InlineLoss):
    """Forward returns ``(N, 1)``; the step squeezes it against ``(N,)`` targets."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x).squeeze(-1), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x).squeeze(-1), y))


class SqueezedBinary(SqueezedRegression):
    """One logit; the step squeezes it for ``binary_cross_entropy_with_logits`` against 0/1 float targets."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self(x).squeeze(-1), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self(x).squeeze(-1), y))


class PaddedTokens(InlineLoss):
    """Variable-length token sequences padded by the loader's collate; the step masks the padding."""

    def __init__(self) -> None:
        super().__init__()
        del self.net
        self.embedding = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.classifier = nn.Linear(16, C)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = (input_ids != 0 if attention_mask is None else attention_mask).unsqueeze(-1).float()
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.classifier(pooled)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"]))


VOCAB = 40


class Sentences(Dataset):
    """Token sequences of 3 to 12 tokens; the first token says the class."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % C
        lengths = torch.randint(3, 13, (n,), generator=g)
        self.items = [torch.randint(C + 1, VOCAB, (int(k),), generator=g) for k in lengths]
        for item, label in zip(self.items, self.labels, strict=True):
            item[0] = 1 + label

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.items[i], "labels": self.labels[i]}


def pad_collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """What a tokenizer's padding collator does: pad to the longest sequence of the batch, with a mask."""
    ids = nn.utils.rnn.pad_sequence([item["input_ids"] for item in items], batch_first=True)
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.stack([i["labels"] for i in items])}


class PackedGRU(InlineLoss):
    """A GRU over a packed sequence: batches are ``(token ids, lengths, labels)``. The convention would
    read ``lengths`` as the targets, so the module says how its batches split (``split_batch``) and its
    forward takes the inputs it returns, ``(ids, lengths)``, as one argument."""

    def __init__(self) -> None:
        super().__init__()
        del self.net
        self.embedding = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.classifier = nn.Linear(16, C)

    def split_batch(self, batch: tuple) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        ids, lengths, labels = batch
        return (ids, lengths), labels

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, lengths = inputs
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(ids), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)  # fmt: skip
        _, hidden = self.gru(packed)
        return self.classifier(hidden[-1])

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        inputs, labels = self.split_batch(batch)
        loss = F.cross_entropy(self(inputs), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        inputs, labels = self.split_batch(batch)
        self.log("val_loss", F.cross_entropy(self(inputs), labels))


def packed_collate(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(padded ids, lengths, labels)``: what a packed-sequence model's collate returns."""
    ids = nn.utils.rnn.pad_sequence([item["input_ids"] for item in items], batch_first=True)
    lengths = torch.tensor([len(item["input_ids"]) for item in items])
    return ids, lengths, torch.stack([item["labels"] for item in items])


class Segmentation(InlineLoss):
    """Per-pixel classes: ``(N, C, H, W)`` logits against ``(N, H, W)`` targets, a 1x1 convolution as the
    head. The head is a convolution, not an ``nn.Linear``, so the module names it (``output_layer_name``)."""

    output_layer_name = "head"

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


class Multilabel(InlineLoss):
    """Several 0/1 labels per sample, BCE with logits inline."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self(x), y))


class OneCycleTwoGroups(InlineLoss):
    """OneCycleLR sized from the run's length, and two param groups at different LRs."""

    def configure_optimizers(self) -> Any:
        groups = [
            {"params": self.net[0].parameters(), "lr": 1e-2},
            {"params": self.net[2].parameters(), "lr": 3e-2},
        ]
        optimizer = torch.optim.AdamW(groups)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[1e-2, 3e-2], total_steps=self.trainer.estimated_stepping_batches
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class OwnLoaders(InlineLoss):
    """The loaders are the module's own hooks (the style of Lightning's early tutorials)."""

    def train_dataloader(self) -> DataLoader:
        return loaders("fit_loaders")[0]

    def val_dataloader(self) -> DataLoader:
        return loaders("fit_loaders")[1]


class LazyData(pl.LightningDataModule):
    """Builds its data sets in ``setup(stage)``, only those of the stage, and counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.setup_calls: list[str | None] = []
        self.loader_calls = {"train": 0, "val": 0}

    def setup(self, stage: str | None = None) -> None:
        self.setup_calls.append(stage)
        if stage == "fit":
            x, y = blobs()
            self.train_set = TensorDataset(x[:128], y[:128])
            self.val_set = TensorDataset(x[128 : 128 + VAL], y[128 : 128 + VAL])
        if stage == "test":
            self.test_set = TensorDataset(*blobs(64, seed=1))

    def train_dataloader(self) -> DataLoader:
        self.loader_calls["train"] += 1
        return DataLoader(self.train_set, batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.loader_calls["val"] += 1
        return DataLoader(self.val_set, batch_size=32)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=32)


def loaders(style: str) -> tuple[DataLoader, DataLoader]:
    x, y = blobs()
    if style.startswith("regression"):
        y = x[:, :3].sum(1) + 0.1 * torch.randn(N, generator=torch.Generator().manual_seed(1))
    elif style == "binary":
        y = (x[:, 0] > 0).float()
    elif style == "multilabel":
        y = (x[:, :C] > 0).float()
    if style == "padded_tokens" or style.startswith("packed_gru"):
        train, val = Sentences(128, 0), Sentences(VAL, 1)
        collate = pad_collate if style == "padded_tokens" else packed_collate
        return (
            DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate),
            DataLoader(val, batch_size=24, collate_fn=collate),
        )
    if style == "segmentation":  # a pixel's class is its intensity's quartile: learnable pixel by pixel
        images = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(2))
        masks = torch.bucketize(images[:, 0], torch.tensor([-0.67, 0.0, 0.67]))
        x, y = images, masks
    end = 128 + VAL
    if style == "dict":
        train, val = DictDataset(x[:128], y[:128]), DictDataset(x[128:end], y[128:end])
    else:
        train, val = TensorDataset(x[:128], y[:128]), TensorDataset(x[128:end], y[128:end])
    return DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=24)


MODELS = {
    "fit_loaders": InlineLoss,
    "dict": DictBatches,
    "regression": SqueezedRegression,
    "binary": SqueezedBinary,
    "lazy_datamodule": InlineLoss,
    "padded_tokens": PaddedTokens,
    "packed_gru": PackedGRU,
    "segmentation": Segmentation,
    "multilabel": Multilabel,
    "one_cycle_two_groups": OneCycleTwoGroups,
    "accumulate_4": InlineLoss,
    "module_hooks": OwnLoaders,
    "bf16_true": InlineLoss,
    "bf16_mixed": InlineLoss,
}
PRECISION = {"bf16_true": "bf16-true", "bf16_mixed": "bf16-mixed"}


def fit(style: str, callbacks: list, max_epochs: int = 1, **options: Any) -> tuple[pl.LightningModule, pl.Trainer, Any]:
    pl.seed_everything(0, verbose=False)
    model = MODELS[style]()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=3,
        callbacks=[SeedEverything(0), *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        precision=PRECISION.get(style, "32-true"),
        accumulate_grad_batches=4 if style == "accumulate_4" else 1,
        **options,
    )
    if style == "lazy_datamodule":
        data = LazyData()
        trainer.fit(model, datamodule=data)
    elif style == "module_hooks":
        data = None
        trainer.fit(model)
    else:
        data = loaders(style)
        trainer.fit(model, train_dataloaders=data[0], val_dataloaders=data[1])
    return model, trainer, data


# Each callback, built small, and what shows that it ran.
CALLBACKS = {
    "InitLossCheck": (lambda: InitLossCheck(on_failure="warn"), lambda c: c.result is not None),
    "LastLayerBiasInit": (lambda: LastLayerBiasInit(), lambda c: c.bias is not None),
    "GradientDependencyProbe": (lambda: GradientDependencyProbe(on_failure="warn"), lambda c: c.result is not None),
    "OverfitBatchCheck": (
        lambda: OverfitBatchCheck(max_steps=30, on_failure="warn"),
        lambda c: c.result is not None,
    ),
    "InputIndependentBaseline": (
        lambda: InputIndependentBaseline(steps=10, train_batches=2, val_batches=2, on_failure="warn"),
        lambda c: c.result is not None,
    ),
    "ShuffleCheck": (lambda: ShuffleCheck(on_failure="warn"), lambda c: c.result is not None),
    "TrainingHealthCheck": (lambda: TrainingHealthCheck(on_failure="warn"), lambda c: True),
    "DropoutBatchNormLint": (lambda: DropoutBatchNormLint(on_failure="warn"), lambda c: c.result is not None),
    "FullDatasetLoss": (lambda: FullDatasetLoss(), lambda c: bool(c.history)),
    "PredictionDynamics": (lambda: PredictionDynamics(num_samples=4), lambda c: bool(c.history)),
    "VisualizeBatch": (lambda: VisualizeBatch(), lambda c: True),
    "FirstLayerFilters": (lambda: FirstLayerFilters(every_n_epochs=1), lambda c: True),
    "ActivationStats": (lambda: ActivationStats(every_n_steps=1), lambda c: True),
    "LRRangeTest": (lambda: LRRangeTest(num_steps=12), lambda c: c.result is not None),
    "DataInspection": (lambda: DataInspection(top_k=4), lambda c: c.report is not None),
}


# `make test-fast` runs the three commonest styles; the rest run with the slow tests (CI runs all).
FAST_STYLES = ("fit_loaders", "dict", "lazy_datamodule")
STYLES = [s if s in FAST_STYLES else pytest.param(s, marks=pytest.mark.slow) for s in sorted(MODELS)]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", sorted(CALLBACKS))
@pytest.mark.filterwarnings("ignore::UserWarning")  # verdicts of short budgets; this asserts that each ran
def test_callback_works_on_user_style(name: str, style: str, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # media written to files land here
    make, ran = CALLBACKS[name]
    callback = make()
    fit(style, [callback])
    assert ran(callback), f"{name} did not run on style {style}"


def test_full_dataset_loss_is_the_exact_mean_with_loaders_given_to_fit() -> None:
    callback = FullDatasetLoss()
    model, _, (_, val) = fit("regression", [callback])
    # The module's own loss (it squeezes (N, 1) to (N,)), summed over samples and divided by their count.
    with torch.no_grad():
        x, y = val.dataset.tensors
        exact = float(F.mse_loss(model(x).squeeze(-1), y, reduction="sum") / len(y))
    assert callback.history[-1]["val"] == pytest.approx(exact, rel=1e-5)
    assert callback.history[-1]["val_count"] == len(y)


def test_init_loss_of_inline_loss_is_ln_c_and_task_is_observed() -> None:
    check = InitLossCheck(on_failure="raise", rtol=0.25)
    fit("fit_loaders", [check])
    assert check.result.passed
    # ln C for balanced classes; the layer's small default bias (it counts as "at the prior") moves it < 1%.
    assert check.result.expected == pytest.approx(math.log(C), rel=0.01)
    assert check.result.measured == pytest.approx(math.log(C), rel=0.25)
    assert check.result.details["task"] == "multiclass"


def test_bias_init_observes_binary_task_of_a_squeezed_one_logit_model() -> None:
    callback = LastLayerBiasInit()
    _, _, (train, _) = fit("binary", [callback])
    p = float(train.dataset.tensors[1].mean())
    assert float(callback.bias) == pytest.approx(math.log(p / (1 - p)), abs=1e-5)


def test_lazy_datamodule_hooks_called_as_often_as_lightning_does(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # DataInspection without a logger writes its tables to the cwd
    baseline = fit("lazy_datamodule", [])[2]
    with_inspection = fit("lazy_datamodule", [DataInspection(top_k=4)])[2]
    assert with_inspection.setup_calls == baseline.setup_calls == ["fit"]


def test_a_test_split_not_set_up_during_fit_is_skipped_with_a_reason(caplog: Any) -> None:
    callback = FullDatasetLoss(splits=["val", "test"])
    with caplog.at_level("INFO"):
        fit("lazy_datamodule", [callback])
    assert "test" not in callback.history[-1] and "val" in callback.history[-1]
    assert any("no test data at fit time" in r.getMessage() for r in caplog.records)


DIAGNOSTICS = [
    "InitLossCheck",
    "GradientDependencyProbe",
    "OverfitBatchCheck",
    "InputIndependentBaseline",
    "ShuffleCheck",
    "DropoutBatchNormLint",
    "FullDatasetLoss",
    "PredictionDynamics",
    "DataInspection",
    "LRRangeTest",
]


@pytest.mark.parametrize("name", DIAGNOSTICS)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_diagnostic_leaves_the_run_bit_identical(name: str, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    plain = fit("fit_loaders", [], max_epochs=2)[0]
    observed = fit("fit_loaders", [CALLBACKS[name][0]()], max_epochs=2)[0]
    for (key, a), b in zip(plain.state_dict().items(), observed.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} changed {key}"


@pytest.mark.parametrize("style", ["packed_gru", "segmentation"])
def test_probe_passes_tuple_inputs_and_dense_outputs_of_clean_models(style: str) -> None:
    probe = GradientDependencyProbe(on_failure="raise")
    fit(style, [probe])
    assert probe.result.passed and probe.result.details["mixed_inputs"] == 0


class MixedPackedGRU(PackedGRU):
    """The planted bug behind tuple inputs: every sample's logits get the batch's mean logits added."""

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        logits = super().forward(inputs)
        return logits + logits.mean(0, keepdim=True)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the FAIL verdict, asserted below
def test_probe_catches_batch_mixing_behind_tuple_inputs() -> None:
    MODELS["packed_gru_mixed"] = MixedPackedGRU
    try:
        probe = GradientDependencyProbe(on_failure="warn")
        fit("packed_gru_mixed", [probe])
    finally:
        del MODELS["packed_gru_mixed"]
    # The probe differentiates through the embedding of the tuple's first item (the token ids).
    assert not probe.result.passed and probe.result.details["mixed_inputs"] == probe.result.details["batch_size"]


def test_checkpoint_ensemble_with_loaders_given_to_test(tmp_path: Any) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_tricks import CheckpointEnsemble

    pl.seed_everything(0, verbose=False)
    model, (train, val) = InlineLoss(), loaders("fit_loaders")
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    options = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    pl.Trainer(max_epochs=2, callbacks=[saver], **options).fit(model, train, val)
    ensemble = CheckpointEnsemble(checkpoints=str(tmp_path / "*.ckpt"), on_failure="raise")
    pl.Trainer(callbacks=[ensemble], enable_checkpointing=False, **options).test(model, dataloaders=val)
    assert ensemble.report is not None and len(ensemble.report.members) == 2
    assert ensemble.report.task == "multiclass"  # observed: the module declares no task and no loss object


class SqueezedRegressionWithCriterion(SqueezedRegression):
    """A `criterion` attribute too, applied in the step after a squeeze that the callbacks cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.criterion = nn.MSELoss()


def test_a_criterion_that_would_broadcast_is_refused_not_a_wrong_number() -> None:
    from lightning_tricks.utilities.protocol import AdapterError

    MODELS["regression_criterion"] = SqueezedRegressionWithCriterion
    try:
        with pytest.raises(AdapterError, match=r"outputs of shape \(24, 1\) with targets of shape \(24,\)"):
            fit("regression_criterion", [FullDatasetLoss()])
    finally:
        del MODELS["regression_criterion"]


class HeadFirst(InlineLoss):
    """Registers its head before its trunk: the last *registered* Linear is the trunk's, not the output."""

    def __init__(self) -> None:
        super().__init__()
        del self.net
        self.head = nn.Linear(32, C)
        self.trunk = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def test_bias_init_finds_the_output_layer_by_call_order() -> None:
    MODELS["head_first"] = HeadFirst
    try:
        callback = LastLayerBiasInit()
        model = fit("head_first", [callback])[0]
    finally:
        del MODELS["head_first"]
    train = loaders("fit_loaders")[0]
    priors = torch.bincount(train.dataset.tensors[1], minlength=C).double() / len(train.dataset)
    assert callback.bias.shape == (C,)  # the head's bias (C outputs), not the trunk's last layer (32)
    assert torch.allclose(callback.bias.double().log_softmax(0), priors.log(), atol=1e-5)
    assert model.head.bias.shape == (C,)


def all_callbacks(style: str, devices: int) -> dict[str, Any]:
    """Every callback of the matrix in one fit (one process, or a DDP rank); what each found."""
    callbacks = {name: make() for name, (make, _) in CALLBACKS.items()}
    strategy = {"strategy": "ddp", "devices": devices} if devices > 1 else {"devices": 1}
    fit(style, list(callbacks.values()), **strategy)
    checks = {name: c.result.passed for name, c in callbacks.items() if hasattr(getattr(c, "result", None), "passed")}
    ran = {name: bool(CALLBACKS[name][1](c)) for name, c in callbacks.items()}
    full = callbacks["FullDatasetLoss"].history[-1]
    return {"checks": checks, "ran": ran, "val": full["val"], "count": full["val_count"]}


def every_style(devices: int) -> dict[str, dict[str, Any]]:
    """:func:`all_callbacks` for every style, in one process group: one launch for the whole matrix.

    63 validation samples (this job's processes only): two ranks get 32 and 31, and a DistributedSampler
    pads the second with a repeat, so a callback that counted the padded shards would report 64."""
    global VAL
    VAL = 63
    return {style: all_callbacks(style, devices) for style in sorted(MODELS)}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_callback_on_every_style_in_two_process_ddp() -> None:
    from lightning_tricks.testing import run_ddp

    ranks = run_ddp(every_style, timeout=540)
    assert len(ranks) == 2
    for style in MODELS:
        first, second = ranks[0][style], ranks[1][style]
        for rank in (first, second):
            assert all(rank["ran"].values()), (style, rank["ran"])
            # The exact, unpadded validation loss: the 63 validation samples counted once each, as in one process.
            assert rank["count"] == 63, (style, rank["count"])
        assert first["checks"] == second["checks"], style  # the same verdicts on every rank
        assert first["val"] == second["val"], style  # and the same exact mean


def test_test_time_augmentation_on_an_inline_loss_module() -> None:
    from lightning_tricks import TestTimeAugmentation

    pl.seed_everything(0, verbose=False)
    model, (train, val) = InlineLoss(), loaders("fit_loaders")
    tta = TestTimeAugmentation(views=["identity"])  # flat features: the identity view, exact closed form
    options = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = pl.Trainer(max_epochs=1, callbacks=[tta], enable_checkpointing=False, **options)
    trainer.fit(model, train, val)
    trainer.test(model, dataloaders=val, verbose=False)
    x, y = val.dataset.tensors
    with torch.no_grad():
        exact = float(F.cross_entropy(model(x), y, reduction="sum")) / len(y)
    assert tta.result.count == len(y) and tta.result.loss == pytest.approx(exact, rel=1e-5)


def test_tta_shift_views_on_signals_without_a_channel_axis() -> None:
    from lightning_tricks import TestTimeAugmentation

    pl.seed_everything(0, verbose=False)
    model, val = InlineLoss(), loaders("fit_loaders")[1]
    tta = TestTimeAugmentation(views=["shift:1", "shift:-1"])  # (N, L) inputs: shifted as (N, 1, L)
    options = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    pl.Trainer(max_epochs=1, callbacks=[tta], enable_checkpointing=False, **options).test(model, dataloaders=val)
    assert tta.result.views == ("identity", "shift:1", "shift:-1") and tta.result.count == 64
