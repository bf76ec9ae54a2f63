"""Models no one here wrote: Hugging Face ``transformers`` classifiers built offline from small configs.

Each is wrapped the way the Hugging Face + Lightning tutorials wrap them: dict batches
(``input_ids``/``attention_mask``/``labels`` or ``pixel_values``/``labels``, plus an ``id`` field),
``forward`` returning a ``ModelOutput``, the loss computed by the model itself when ``labels`` are
given, loaders passed to ``trainer.fit``. Nothing is downloaded: random init from a config.

torchvision and timm are not used: with the pinned CPU torch the registry's torchvision wheel is a
CUDA build that fails to import (``operator torchvision::nms does not exist``); ``transformers``'
own ResNet and ViT need no torchvision (README, "How a callback meets your model").
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_tricks import (
    FullDatasetLoss,
    GradientDependencyProbe,
    LastLayerBiasInit,
    PredictionDynamics,
    SeedEverything,
    VisualizeBatch,
    run_preflight,
)

transformers = pytest.importorskip("transformers")

C = 3  # classes
N = 96  # samples per split


def text_model() -> Any:
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=C,
    )
    return transformers.BertForSequenceClassification(config)


def vit_model() -> Any:
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=C,
    )
    return transformers.ViTForImageClassification(config)


def resnet_model() -> Any:
    config = transformers.ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=C
    )
    return transformers.ResNetForImageClassification(config)


class Items(Dataset):
    """Dict items: tokens whose first token says the class, or 8x8 images whose mean says it."""

    def __init__(self, kind: str, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(N) % C
        if kind == "text":
            self.tokens = torch.randint(C + 1, 64, (N, 10), generator=g)
            self.tokens[:, 0] = 1 + self.labels  # the class is in the sequence
        else:
            self.pixels = torch.randn(N, 1, 8, 8, generator=g) * 0.5 + self.labels.view(-1, 1, 1, 1).float()
        self.kind = kind

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.kind == "text":
            ids = self.tokens[i]
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i], "id": i}
        return {"pixel_values": self.pixels[i], "labels": self.labels[i], "id": i}


class HFClassifier(pl.LightningModule):
    """The tutorials' wrapper: the model computes its own loss from ``labels``; no criterion, no task."""

    def __init__(self, build: Any, mix: bool = False) -> None:
        super().__init__()
        self.model = build()
        self.mix = mix

    def forward(self, inputs: torch.Tensor, **kwargs: Any) -> Any:
        if self.mix:  # a planted bug: each sample's inputs leak into the next one's
            inputs = inputs + 0.5 * inputs.roll(1, 0) if inputs.is_floating_point() else inputs
        key = "pixel_values" if inputs.is_floating_point() else "input_ids"
        return self.model(**{key: inputs, **kwargs})

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._outputs(batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._outputs(batch).loss
        self.log("val_loss", loss)
        return loss

    def _outputs(self, batch: dict) -> Any:
        inputs = batch.get("pixel_values", batch.get("input_ids"))
        extra = {k: batch[k] for k in ("attention_mask", "labels") if k in batch}
        return self(inputs, **extra)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


MODELS = {"bert": (text_model, "text"), "vit": (vit_model, "image"), "resnet": (resnet_model, "image")}


def data(kind: str) -> tuple[DataLoader, DataLoader]:
    return DataLoader(Items(kind, 0), batch_size=16, shuffle=True), DataLoader(Items(kind, 1), batch_size=16)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_default_recipe_and_monitors_run_unchanged(name: str, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    build, kind = MODELS[name]
    pl.seed_everything(0, verbose=False)
    model = HFClassifier(build)
    train, val = data(kind)
    full, dynamics, bias = FullDatasetLoss(), PredictionDynamics(num_samples=4), LastLayerBiasInit()
    pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        callbacks=[SeedEverything(0), bias, full, dynamics, VisualizeBatch()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, train, val)
    # The output layer is the classifier head, and its bias holds the log priors (balanced: equal).
    assert bias.bias is not None and torch.allclose(bias.bias, bias.bias.mean().expand_as(bias.bias), atol=1e-6)
    assert full.history[-1]["val_count"] == N
    assert 0 < full.history[-1]["val"] < 10
    assert 0 <= full.history[-1]["val_acc"] <= 1  # logits read from the ModelOutput
    assert {row["split"] for row in dynamics.history} == {"val"} and len(dynamics.history) == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_preflight_passes_on_the_clean_model_and_the_probe_catches_batch_mixing(name: str) -> None:
    build, kind = MODELS[name]
    train, val = data(kind)
    pl.seed_everything(0, verbose=False)
    report = run_preflight(HFClassifier(build), train_dataloaders=train, val_dataloaders=val)
    assert report.passed, report.to_markdown()  # every check, and no false alarm, on the clean model
    if kind == "image":  # inputs are pixels: the planted mixing is on the inputs the probe differentiates
        mixed = run_preflight(
            HFClassifier(build, mix=True),
            checks=[GradientDependencyProbe(on_failure="ignore")],
            train_dataloaders=train,
            val_dataloaders=val,
        )
        assert not mixed.results[0].passed
