"""What the recipe costs on a real-size workload, against a bare Trainer in the same run (issue 19).

Workloads (CPU, generated data, random init, nothing downloaded):

* ``resnet``: a ResNet-18-shaped network (``transformers``' ``ResNetForImageClassification`` with
  ResNet-18's depths and widths; torchvision does not import beside the pinned CPU torch) on
  generated 3x32x32 images, 10 classes;
* ``mnist1d``: the reference 1-D CNN on MNIST-1D generated to 60,000 samples.

Measured, each as a ratio in one run:

1. steady-state epoch time with the default recipe's monitors (``FullDatasetLoss``,
   ``PredictionDynamics``, ``VisualizeBatch``) over a bare Trainer (target <= 1.02), as an A/B of alternated
   runs and, within one run, as the share of the fit spent in the monitors' hooks (Lightning's
   ``SimpleProfiler``);
2. the whole preflight (``run_preflight``, default checks) over one epoch (target <= 0.5);
3. the LR range test of 100 steps over one epoch (target <= 0.2);
4. ``FullDatasetLoss`` alone over Lightning's own validation loop on the same split (target <= 1.0);
5. ``GradientDependencyProbe``'s probe over one forward+backward of the same batch, at batch 64 and 256
   (target <= 3, flat in the batch size);
6. ``DataInspection``'s fit-end pass (every validation sample scored, the top-k logged, the full table
   saved) over Lightning's validation loop on the same split (target <= 1.0).

Usage: python benchmarks/bench_real_workload.py [--workload resnet|mnist1d] [--train N] [--batch-size B] [--epochs 4]
(defaults: resnet 1,024 images at batch 64, 16 steps an epoch; mnist1d 60,000 samples generated, 42,000 of them
in the train split, at batch 42: 1,000 steps an epoch, the length the targets are sized for).
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import SimpleProfiler
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


@functools.cache
def _data(name: str, n_train: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The workload's samples, generated once per process (MNIST-1D at 60,000 samples takes minutes)."""
    g = torch.Generator().manual_seed(0)
    if name == "resnet":
        n_val = max(256, n_train // 8)
        x = torch.randn(n_train + n_val, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n_train + n_val,), generator=g)
        return x, y, n_train
    from lightning_tricks.data import MNIST1DDataModule

    dm = MNIST1DDataModule(num_samples=n_train * 6 // 5, seed=0)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    train_x, train_y = zip(*[train[i] for i in range(len(train))], strict=True)
    val_x, val_y = zip(*[val[i] for i in range(len(val))], strict=True)
    x, y = torch.stack([*train_x, *val_x]), torch.as_tensor([*train_y, *val_y])
    return x, y, len(train_x)


def workload(name: str, n_train: int, batch: int) -> tuple[Any, DataLoader, DataLoader]:
    """A fresh model and loaders over the (cached) samples."""
    x, y, n_train = _data(name, n_train)
    if name == "resnet":
        model = ResNet18()
    else:
        from lightning_tricks.models import CNN

        model = CNN(input_shape=tuple(x.shape[1:]), num_outputs=10)
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch, shuffle=True)
    val = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=256)
    return model, train, val


class EpochTimer(pl.Callback):
    """Epoch boundaries; with ``spent`` (seconds spent so far in the monitors' hooks), that too at each."""

    def __init__(self, spent: Callable[[], float] = lambda: 0.0) -> None:
        self.marks: list[float] = []
        self.spent, self.spent_marks = spent, []
        self.start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks.append(time.perf_counter())
        self.spent_marks.append(self.spent())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks.append(time.perf_counter())
        self.spent_marks.append(self.spent())

    def steady(self) -> float:
        """Median epoch time after the first (warm-up) epoch."""
        return statistics.median(b - a for a, b in zip(self.marks[1:], self.marks[2:], strict=False))

    def steady_share(self) -> float:
        """Median over the epochs after the first of epoch time / (epoch time - the monitors' time in it)."""
        epochs = [b - a for a, b in zip(self.marks[1:], self.marks[2:], strict=False)]
        spent = [b - a for a, b in zip(self.spent_marks[1:], self.spent_marks[2:], strict=False)]
        return statistics.median(e / (e - m) for e, m in zip(epochs, spent, strict=True))

    def whole(self) -> float:
        """The whole fit, one-off costs included (first batch pictures, end-of-training plots)."""
        return self.marks[-1] - self.start


ROOT = tempfile.mkdtemp(prefix="bench_real_workload_")  # the monitors' PNG files (no logger), not the cwd


def trainer(callbacks: list, epochs: int, **kwargs: Any) -> pl.Trainer:
    kwargs.setdefault("default_root_dir", ROOT)
    return pl.Trainer(
        accelerator="auto", max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["resnet", "mnist1d"], default="mnist1d")
    parser.add_argument("--train", type=int, default=None, help="resnet: training images (1024); mnist1d: 5/6 of "
                        "the samples generated (50000: 60,000 generated, 42,000 in its train split)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=None, help="resnet 64; mnist1d 42 (1,000 steps an epoch)")
    parser.add_argument("--epochs", type=int, default=4, help="the steady epoch is the median of all but the first")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure as soon as it is measured
    n_train = args.train or (1024 if args.workload == "resnet" else 50000)
    batch = args.batch_size or (64 if args.workload == "resnet" else 42)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(2)

    epochs, whole = {}, {}
    for monitored in (False, True, False, True):  # alternated: drift in machine load hits both
        pl.seed_everything(0, verbose=False)
        model, train, val = workload(args.workload, n_train, batch)
        timer = EpochTimer()
        monitors = [FullDatasetLoss(), PredictionDynamics(), VisualizeBatch()] if monitored else []
        trainer([timer, *monitors], args.epochs).fit(model, train, val)
        epochs.setdefault(monitored, []).append(timer.steady())
        whole.setdefault(monitored, []).append(timer.whole())
    bare, monitored = min(epochs[False]), min(epochs[True])
    whole_bare, whole_monitored = min(whole[False]), min(whole[True])
    print(f"{args.workload}: {len(train.dataset):,} training samples, batch {batch}, {len(train)} steps an epoch")
    print(f"1. epoch with the default monitors: {monitored:.2f} s vs bare {bare:.2f} s: {monitored / bare:.3f}x "
          f"(target <= 1.02); the whole {args.epochs}-epoch fit, one-off costs included: "
          f"{whole_monitored:.1f} s vs {whole_bare:.1f} s: {whole_monitored / whole_bare:.3f}x")  # fmt: skip

    # The A/B ratio above compares two runs, and epoch times on a shared 2-core VM wander by several per
    # cent between runs. Measured inside one run instead: the time spent in the monitors' own hooks, as
    # Lightning's SimpleProfiler records each callback hook (one-off costs included).
    pl.seed_everything(0, verbose=False)
    model, train, val = workload(args.workload, n_train, batch)
    profiler = SimpleProfiler()
    monitors = [FullDatasetLoss(), PredictionDynamics(), VisualizeBatch()]

    def spent_in(monitor: pl.Callback) -> float:
        prefix = f"[Callback]{monitor.state_key}."
        return sum(sum(d) for action, d in profiler.recorded_durations.items() if action.startswith(prefix))

    timer = EpochTimer(lambda: sum(spent_in(m) for m in monitors))
    trainer([timer, *monitors], args.epochs, profiler=profiler).fit(model, train, val)
    spent = {type(m).__name__: spent_in(m) for m in monitors}
    hooks = sum(spent.values())
    print(f"   in one run: a steady epoch {timer.steady_share():.3f}x; the whole fit {timer.whole():.1f} s, of "
          f"which {hooks:.2f} s in the monitors' hooks: {timer.whole() / (timer.whole() - hooks):.3f}x ("
          + ", ".join(f"{name} {t:.2f} s" for name, t in spent.items()) + ")")  # fmt: skip

    pl.seed_everything(0, verbose=False)
    model, train, val = workload(args.workload, n_train, batch)
    start = time.perf_counter()
    run_preflight(model, train_dataloaders=train, val_dataloaders=val)
    preflight = time.perf_counter() - start
    print(f"2. preflight: {preflight:.2f} s = {preflight / bare:.2f} of a bare epoch (target <= 0.5)")

    pl.seed_everything(0, verbose=False)
    model, train, val = workload(args.workload, n_train, batch)
    sweep = LRRangeTest(num_steps=100)
    start = time.perf_counter()
    trainer([sweep], 1, max_steps=1, limit_val_batches=0).fit(model, train, val)
    lr_test = time.perf_counter() - start
    print(f"3. LR range test, 100 steps (+1 training step): {lr_test:.2f} s = {lr_test / bare:.2f} of an epoch")

    pl.seed_everything(0, verbose=False)
    model, train, val = workload(args.workload, n_train, batch)
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
    for _ in range(5):  # alternated, best of 5: single passes on this VM wander by tens of per cent
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

    inspection, scoring, lightning_val = [], [], []
    with tempfile.TemporaryDirectory() as root:
        for _ in range(5):  # alternated, best of 5
            t = trainer([], 1, default_root_dir=root)
            start = time.perf_counter()
            t.validate(model, val, verbose=False)
            lightning_val.append(time.perf_counter() - start)
            callback = DataInspection(splits=["val"], at_fit_start=False)
            start = time.perf_counter()
            callback.evaluate(t, model, "val")  # the scoring pass alone: every sample's row, gathered and sorted
            scoring.append(time.perf_counter() - start)
            start = time.perf_counter()
            callback.rank(t, model)  # what runs at fit end: the scoring pass, the full table, the top-k table and grid
            inspection.append(time.perf_counter() - start)
    ratio = min(inspection) / min(lightning_val)
    print(f"6. DataInspection fit-end pass on val: {min(inspection):.2f} s vs Lightning's validation loop "
          f"{min(lightning_val):.2f} s: {ratio:.2f}x (target <= 1.0); its scoring pass alone {min(scoring):.2f} s: "
          f"{min(scoring) / min(lightning_val):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
