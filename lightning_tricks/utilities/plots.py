"""Matplotlib figures that need no display and no global pyplot state (safe in callbacks and workers)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float = 5.0, height: float = 3.5) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def loss_curve(curves: dict[str, Sequence[float]], title: str, log_y: bool = True) -> Figure:
    """Loss against step, one line per curve."""
    figure = new_figure()
    ax = figure.subplots()
    for label, values in curves.items():
        ax.plot(range(len(values)), values, label=label)
    if log_y and all(v > 0 for values in curves.values() for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    return figure
