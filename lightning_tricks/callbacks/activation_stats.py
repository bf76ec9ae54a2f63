"""Recipe 4 (end): activations show defects too — per-layer mean, std, dead and saturated units over training."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from typing_extensions import override

from lightning_tricks.utilities.arguments import check_int
from lightning_tricks.utilities.media import log_image, log_scalars
from lightning_tricks.utilities.plots import new_figure
from lightning_tricks.utilities.state_keys import StatefulCallback

RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus)
SQUASHERS = (nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Softsign)
WATCHED = (*RECTIFIERS, *SQUASHERS, nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def activation_summary(module: nn.Module, output: torch.Tensor) -> dict[str, float]:
    """Mean, std, fraction of dead units (rectifiers: never positive on the batch), fraction saturated (squashers).

    Units are the channels (dim 1) of an ``(N, C, ...)`` output, the features of an ``(N, F)`` one.
    """
    y = output.detach().float()
    stats = {"mean": float(y.mean()), "std": float(y.std()) if y.numel() > 1 else 0.0}
    units = y.transpose(0, 1).reshape(y.shape[1], -1) if y.ndim >= 2 else y.reshape(1, -1)
    if isinstance(module, RECTIFIERS):
        stats["dead"] = float((units.max(dim=1).values <= 0).float().mean())
    if isinstance(module, (nn.Tanh, nn.Hardtanh, nn.Softsign)):
        stats["saturated"] = float((y.abs() > 0.99).float().mean())
    elif isinstance(module, nn.Sigmoid):
        stats["saturated"] = float(((y < 0.01) | (y > 0.99)).float().mean())
    return stats


class ActivationStats(StatefulCallback):
    """Every ``every_n_steps`` steps, hook the layers during that step's own forward and record activation health.

    Watched: activation modules (ReLU family: fraction of dead units; tanh/sigmoid: fraction
    saturated) and Linear/Conv outputs (mean, std), up to ``max_layers``, in registration order.
    Hooks are registered just before the sampled step and removed right after it (and at the end
    in any case), so other steps run unhooked. Numbers go to ``tricks/activations/<layer>/<stat>``;
    at each epoch end a heat map (layers x sampled steps) of std and dead/saturated fractions.
    Functional activations (``F.relu``) are not modules and are not seen. Under DDP each rank
    hooks its own batch; rank zero logs.
    """

    def __init__(self, every_n_steps: int = 50, max_layers: int = 32) -> None:
        self.every_n_steps = check_int(every_n_steps, "every_n_steps", owner="ActivationStats")
        self.max_layers = check_int(max_layers, "max_layers", owner="ActivationStats")
        self.history: list[dict[str, Any]] = []
        self._handles: list[Any] = []
        self._current: dict[str, dict[str, float]] = {}
        self._types: dict[str, str] = {}

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        self._remove()
        watched = [(n, m) for n, m in pl_module.named_modules() if n and isinstance(m, WATCHED)][: self.max_layers]
        for name, module in watched:
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            if name not in self._current and isinstance(output, torch.Tensor) and output.ndim >= 1:
                self._current[name] = activation_summary(module, output)
                self._types[name] = type(module).__name__

        return record

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._handles:
            return
        self._remove()
        step = trainer.global_step - 1  # the step whose forward was observed
        for layer, stats in self._current.items():
            self.history.append({"step": step, "layer": layer, **stats})
        values = {
            f"tricks/activations/{layer}/{k}": v for layer, stats in self._current.items() for k, v in stats.items()
        }
        log_scalars(trainer, values, step=step)
        self._current = {}

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.history:
            log_image(trainer, "tricks/activations/heatmap", self.heatmap())

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def heatmap(self):
        """Layers x sampled steps: std of the activations, and the dead (or saturated) fraction."""
        layers = list(dict.fromkeys(r["layer"] for r in self.history))
        steps = sorted({r["step"] for r in self.history})
        grids = {key: np.full((len(layers), len(steps)), np.nan) for key in ("std", "dead / saturated")}
        for r in self.history:
            i, j = layers.index(r["layer"]), steps.index(r["step"])
            grids["std"][i, j] = r["std"]
            grids["dead / saturated"][i, j] = r.get("dead", r.get("saturated", np.nan))
        figure = new_figure(min(12.0, 3.0 + 0.25 * len(steps)) * 2, 1.2 + 0.3 * len(layers))
        for ax, (title, grid) in zip(figure.subplots(1, 2), grids.items(), strict=True):
            image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0 if title != "std" else None,
                              vmax=1 if title != "std" else None)  # fmt: skip
            ax.set_yticks(range(len(layers)), [f"{n} ({self._types.get(n, '?')})" for n in layers], fontsize=7)
            ticks = range(0, len(steps), max(1, len(steps) // 8))
            ax.set_xticks(list(ticks), [str(steps[t]) for t in ticks], fontsize=7)
            ax.set_xlabel("step")
            ax.set_title(f"activations: {title}")
            figure.colorbar(image, ax=ax)
        return figure

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, max_layers=self.max_layers)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
