"""Recipe 2.10: visualise the data exactly as it enters the network — after every transform and collate step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from lightning_tricks.functional.images import make_grid
from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.media import log_image, log_table
from lightning_tricks.utilities.plots import new_figure
from lightning_tricks.utilities.protocol import ModelAdapter
from lightning_tricks.utilities.state_keys import StatefulCallback


def looks_like_images(x: torch.Tensor) -> bool:
    """(N, C, H, W) with 1, 3 or 4 channels, or (N, H, W), both with H, W >= 4."""
    if x.ndim == 4:
        return x.shape[1] in (1, 3, 4) and min(x.shape[2:]) >= 4
    return x.ndim == 3 and min(x.shape[1:]) >= 4 and x.is_floating_point()


class VisualizeBatch(StatefulCallback):
    """Log the first ``num_batches`` training batches as the model receives them.

    A forward pre-hook on the LightningModule captures the input of its first forward call in each
    of those steps, so augmentation, collate and anything ``training_step`` does before
    ``self(x)`` has happened. Images become a labelled grid (un-normalised with ``mean``/``std``
    when given); other inputs a table of values and per-feature histograms (one heat map, feature by
    value); the labels a histogram. The hook is removed as soon as it is done (and at the end of
    training in any case). ``captured`` keeps the CPU tensors for inspection. A resumed run does not
    log again.
    """

    def __init__(
        self,
        num_batches: int = 1,
        max_samples: int = 32,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        split_batch: Any = None,
    ) -> None:
        self.num_batches = check_int(num_batches, "num_batches", owner="VisualizeBatch")
        self.max_samples = check_int(max_samples, "max_samples", owner="VisualizeBatch")
        if (mean is None) != (std is None):
            raise ValueError(f"VisualizeBatch: give both `mean` and `std` or neither, got mean={mean!r}, std={std!r}.")
        self.mean, self.std = mean, std
        self.adapter = ModelAdapter(split_batch=split_batch)
        self.captured: list[torch.Tensor] = []
        self.logged = 0
        self._handle: Any = None
        self._inputs: torch.Tensor | None = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.logged < self.num_batches and self._handle is None:
            self._handle = pl_module.register_forward_pre_hook(self._capture)

    def _capture(self, module: torch.nn.Module, args: tuple) -> None:
        if self._inputs is None and args and isinstance(args[0], torch.Tensor):
            self._inputs = args[0].detach()[: self.max_samples].cpu().clone()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._handle is None:
            return
        inputs, self._inputs = self._inputs, None
        if inputs is not None:
            targets = self.adapter.inputs_targets(pl_module, batch)[1]
            targets = targets.detach()[: self.max_samples].cpu() if isinstance(targets, torch.Tensor) else None
            self.captured.append(inputs)
            self._log(trainer, inputs, targets, self.logged)
            self.logged += 1
        if self.logged >= self.num_batches:
            self._remove()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove()

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _log(self, trainer: pl.Trainer, inputs: torch.Tensor, targets: torch.Tensor | None, index: int) -> None:
        key = f"tricks/visualize_batch/{index}"
        labels = targets.tolist() if targets is not None and targets.ndim == 1 else None
        if looks_like_images(inputs):
            log_image(trainer, f"{key}/inputs", self._image_grid(inputs, labels))
        else:
            flat = inputs.reshape(inputs.shape[0], -1).float()
            columns = ["label"] + [f"x{j}" for j in range(min(flat.shape[1], 32))]
            rows = [
                [labels[i] if labels else None, *[round(float(v), 5) for v in flat[i, :32]]] for i in range(len(flat))
            ]
            log_table(trainer, f"{key}/values", columns, rows)
            log_image(trainer, f"{key}/feature_histograms", self._histograms(flat))
        if targets is not None and targets.numel():
            log_image(trainer, f"{key}/labels", self._label_histogram(targets))

    def _unnormalise(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean is None or images.ndim != 4:
            return images
        shape = (1, -1, 1, 1)
        return images * torch.tensor(self.std).reshape(shape) + torch.tensor(self.mean).reshape(shape)

    def _image_grid(self, images: torch.Tensor, labels: list | None):
        # One image of tiles (scaled together) and a text label per tile: one axes draws in milliseconds,
        # where one subplot per sample takes a large fraction of a second.
        images = self._unnormalise(images.float())
        if images.ndim == 3:
            images = images[:, None]
        n, _, h, w = images.shape
        cols = int(np.ceil(np.sqrt(n)))
        grid = make_grid(images, ncols=cols, padding=2)
        rows = int(np.ceil(n / cols))
        figure = new_figure(max(3.0, 0.9 * cols + 0.6), max(2.5, 0.9 * rows + 0.8))
        ax = figure.subplots()
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
        ax.axis("off")
        if labels is not None:
            for i, label in enumerate(labels[:n]):
                r, c = divmod(i, cols)
                ax.text(c * (w + 2), r * (h + 2), str(label), color="yellow", fontsize=7, va="top",
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})  # fmt: skip
        lo, hi = float(images.min()), float(images.max())
        ax.set_title(f"inputs as the model sees them: {tuple(images.shape[1:])}, values {lo:.3g}..{hi:.3g}", fontsize=9)
        return figure

    def _histograms(self, flat: torch.Tensor):
        """Each feature's histogram as one column of a heat map, on a value axis shared by all features.

        One axes for up to 64 features, so scales can be compared at a glance (an unnormalised or constant
        feature stands out; a feature far off that scale also squeezes the others into a few bins, which is
        what to fix first). NaN and inf values are counted in the title, not binned. 16 histogram subplots
        took ~1 s to draw, this ~0.15 s.
        """
        values = flat.double().numpy()
        shown = min(values.shape[1], 64)
        is_finite = np.isfinite(values[:, :shown])
        finite = values[:, :shown][is_finite]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0  # a constant batch still gets a visible bin
        edges = np.linspace(lo, hi, 31)
        counts = np.stack([np.histogram(values[:, j], bins=edges)[0] for j in range(shown)], axis=1)
        figure = new_figure(6.0, 3.4)
        ax = figure.subplots()
        image = ax.imshow(counts, aspect="auto", origin="lower", extent=(-0.5, shown - 0.5, lo, hi),
                          cmap="viridis", interpolation="nearest")  # fmt: skip
        figure.colorbar(image, ax=ax, label="samples")
        ax.set_xlabel(f"feature (first {shown} of {values.shape[1]})")
        ax.set_ylabel("value")
        missing = int((~is_finite).sum())
        note = f" ({missing} NaN/inf values not shown)" if missing else ""
        ax.set_title(f"per-feature histograms of the batch{note}", fontsize=9)
        return figure

    def _label_histogram(self, targets: torch.Tensor):
        figure = new_figure(4.5, 3.0)
        ax = figure.subplots()
        values = targets.float().reshape(-1).numpy()
        if targets.is_floating_point() and not np.all(np.mod(values, 1) == 0):
            ax.hist(values, bins=20)
            ax.set_xlabel("target")
        else:
            classes, counts = np.unique(values.astype(np.int64), return_counts=True)
            ax.bar(classes, counts)
            ax.set_xticks(classes)
            ax.set_xlabel("label")
        ax.set_ylabel("samples in the batch")
        ax.set_title("labels of the batch")
        return figure

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(num_batches=self.num_batches, max_samples=self.max_samples)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"logged": self.logged}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.logged = int(state_dict.get("logged", 0))
