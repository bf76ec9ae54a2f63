"""What the recipe costs on a real-size workload, against a bare Trainer in the same run (issue 19).

Workloads (CPU, generated data, random init, nothing downloaded):

* ``resnet``: a ResNet-18-shaped network (``transformers``' ``ResNetForImageClassification`` with
  ResNet-18's depths and widths; torchvision does not import beside the pinned CPU torch) on
  generated 3x32x32 images, 10 classes;
* ``mnist1d``: the reference 1-D CNN on MNIST-1D generated to 60,000 samples.

Measured, each as a ratio in one run:

1. steady-state epoch time with the default recipe's monitors (``FullDatasetLoss``,
   ``PredictionDynamics``, ``VisualizeBatch``) over a bare Trainer (target <= 1.02);
2. the whole preflight (``run_preflight``, default checks) over one epoch (target <= 0.5);
3. the LR range test of 100 steps over one epoch (target <= 0.2);
4. ``FullDatasetLoss`` alone over Lightning's own validation loop on the same split (target <= 1.0);
5. ``GradientDependencyProbe``'s probe over one forward+backward of the same batch, at batch 64 and 256
   (target <= 3, flat in the batch size);
6. ``DataInspection``'s fit-end pass (every validation sample scored, the top-k logged, the full table
   saved) over Lightning's validation loop on the same split (target <= 1.0).

Usage: python benchmarks/bench_real_workload.py [--workload resnet|mnist1d] [--train 2048] [--epochs 3]
(the defaults are sized for a 2-core machine; pass larger --train for closer-to-real epochs).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks import (
    DataInspection,
    FullDatasetLoss,
    GradientDependencyProbe,
    LRRangeTest,
    PredictionDynamics,
    VisualizeBatch,
    run_preflight,
)
from lightning_tricks.functional.gradient_dependency import batch_dependency
from lightning_tricks.utilities.protocol import logits_of


class ResNet18(pl.LightningModule):
    """transformers' ResNet with ResNet-18's layout (2-2-2-2 basic blocks, 64-512 channels)."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        import transformers

        config = transformers.ResNetConfig(
            num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
            layer_type="basic", num_labels=10,
        )  # fmt: skip
        self.model = transformers.ResNetForImageClassification(config)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.criterion(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.criterion(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def workload(name: str, n_train: int) -> tuple[Any, DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    if name == "resnet":
        n_val = max(256, n_train // 8)
        x = torch.randn(n_train + n_val, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n_train + n_val,), generator=g)
        model = ResNet18()
        batch = 64
    else:
        from lightning_tricks.data import MNIST1DDataModule
        from lightning_tricks.models import CNN

        dm = MNIST1DDataModule(num_samples=n_train * 6 // 5, seed=0)
        dm.setup("fit")
        train_x, train_y = zip(*[dm.datasets["train"][i] for i in range(len(dm.datasets["train"]))], strict=True)
        val_x, val_y = zip(*[dm.datasets["val"][i] for i in range(len(dm.datasets["val"]))], strict=True)
        x, y = torch.stack([*train_x, *val_x]), torch.as_tensor([*train_y, *val_y])
        n_train = len(train_x)
        model = CNN(input_shape=tuple(x.shape[1:]), num_outputs=10)
        batch = 128
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch, shuffle=True)
    val = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=256)
    return model, train, val


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks.append(time.perf_counter())

    def steady(self) -> float:
        """Median epoch time after the first (warm-up) epoch."""
        return statistics.median(b - a for a, b in zip(self.marks[1:], self.marks[2:], strict=False))


def trainer(callbacks: list, epochs: int, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="auto", max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["resnet", "mnist1d"], default="mnist1d")
    parser.add_argument("--train", type=int, default=None, help="training samples (resnet 1024, mnist1d 50000)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    n_train = args.train or (1024 if args.workload == "resnet" else 50000)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(2)

    epochs = {}
    for monitored in (False, True, False, True):  # alternated: drift in machine load hits both
        pl.seed_everything(0, verbose=False)
        model, train, val = workload(args.workload, n_train)
        timer = EpochTimer()
        monitors = [FullDatasetLoss(), PredictionDynamics(), VisualizeBatch()] if monitored else []
        trainer([timer, *monitors], args.epochs).fit(model, train, val)
        epochs.setdefault(monitored, []).append(timer.steady())
    bare, monitored = min(epochs[False]), min(epochs[True])
    print(f"{args.workload}: {len(train.dataset):,} training samples, {len(train)} steps an epoch")
    print(f"1. epoch with the default monitors: {monitored:.2f} s vs bare {bare:.2f} s: {monitored / bare:.3f}x")

    pl.seed_everything(0, verbose=False)
    model, train, val = workload(args.workload, n_train)
    start = time.perf_counter()
    run_preflight(model, train_dataloaders=train, val_dataloaders=val)
    preflight = time.perf_counter() - start
    print(f"2. preflight: {preflight:.2f} s = {preflight / bare:.2f} of a bare epoch (target <= 0.5)")

    pl.seed_everything(0, verbose=False)
    model, train, val = workload(args.workload, n_train)
    sweep = LRRangeTest(num_steps=100)
    start = time.perf_counter()
    trainer([sweep], 1, max_steps=1, limit_val_batches=0).fit(model, train, val)
    lr_test = time.perf_counter() - start
    print(f"3. LR range test, 100 steps (+1 training step): {lr_test:.2f} s = {lr_test / bare:.2f} of an epoch")

    pl.seed_everything(0, verbose=False)
    model, train, val = workload(args.workload, n_train)
    probe_lines = []
    for batch_size in (64, 256):
        x = torch.cat([b[0] for b in val])[:batch_size]
        y = torch.cat([b[1] for b in val])[:batch_size]
        probe, step = [], []
        for _ in range(3):  # alternated, best of 3
            model.eval()  # as the check runs it: per-sample behaviour
            start = time.perf_counter()
            outputs, probed = GradientDependencyProbe().probe(model, x)  # the forward pass
            batch_dependency(logits_of(outputs), probed)  # and the backward passes that read the gradients
            probe.append(time.perf_counter() - start)
            model.train()
            start = time.perf_counter()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            model.zero_grad(set_to_none=True)
            step.append(time.perf_counter() - start)
        probe_lines.append(f"batch {batch_size}: {min(probe) / min(step):.2f}x")

    lightning_val, ours = [], []
    for _ in range(3):  # alternated, best of 3
        t = trainer([], 1)
        start = time.perf_counter()
        t.validate(model, val, verbose=False)  # Lightning's own loop (its epoch-mean val loss)
        lightning_val.append(time.perf_counter() - start)
        start = time.perf_counter()
        FullDatasetLoss().evaluate(t, model, "val")  # the exact sum / count over the same loader
        ours.append(time.perf_counter() - start)
    ratio = min(ours) / min(lightning_val)
    print(f"4. FullDatasetLoss on val: {min(ours):.2f} s vs Lightning's validation loop {min(lightning_val):.2f} s: "
          f"{ratio:.2f}x (target <= 1.0)")  # fmt: skip

    print(f"5. GradientDependencyProbe over one forward+backward: {', '.join(probe_lines)} (target <= 3, flat)")

    inspection, lightning_val = [], []
    with tempfile.TemporaryDirectory() as root:
        for _ in range(3):  # alternated, best of 3
            t = trainer([], 1, default_root_dir=root)
            start = time.perf_counter()
            t.validate(model, val, verbose=False)
            lightning_val.append(time.perf_counter() - start)
            start = time.perf_counter()
            DataInspection(splits=["val"], at_fit_start=False).rank(t, model)
            inspection.append(time.perf_counter() - start)
    ratio = min(inspection) / min(lightning_val)
    print(f"6. DataInspection fit-end pass on val: {min(inspection):.2f} s vs Lightning's validation loop "
          f"{min(lightning_val):.2f} s: {ratio:.2f}x (target <= 1.0)")  # fmt: skip


if __name__ == "__main__":
    main()
