"""`lightning-tricks lr-find`: the LR range test on the configured model and data, in one process, no Trainer.

The sweep is :func:`~lightning_tricks.callbacks.lr_range_test.lr_range_test` — the callback's code —
run on the model's own optimizer (from ``configure_optimizers``, so a Hydra ``_partial_`` optimizer
works). To sweep under DDP, add the ``LRRangeTest`` callback to a ``train`` run instead.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_tricks.callbacks.lr_range_test import RangeTestResult, lr_range_test, no_descent_advice
from lightning_tricks.commands.console import quiet_unless_verbose
from lightning_tricks.commands.run_log import logs_terminal
from lightning_tricks.commands.usage_errors import exits_on_usage_error


def lr_find(cfg: DictConfig) -> RangeTestResult:
    """Build the configured data and model, sweep, and save the curve, its points and the suggestions."""
    from lightning_tricks.commands.train import build_data_and_model

    datamodule, model = build_data_and_model(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    options = OmegaConf.to_container(cfg.lr_range_test, resolve=True)
    options.pop("_target_", None)
    options.pop("apply", None)  # nothing to apply to: no run follows
    for key in ("split_batch", "loss_fn"):
        if options.pop(key, None) is not None:
            raise ValueError(f"lr-find: `lr_range_test.{key}` is only supported by the LRRangeTest callback.")
    result = lr_range_test(model, datamodule.train_dataloader(), None, progress=True, **options)
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    result.plot().savefig(folder / "lr_range_test.png")
    with (folder / "lr_range_test.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lr", "loss", "smoothed"])
        writer.writerows(zip(result.lrs, result.losses, result.smoothed, strict=True))
    summary = {
        "suggestion": result.suggestion if result.clear_descent else None,
        "rule": result.rule,
        "suggestions": result.suggestions,
        "stopped_early": result.stopped_early,
        "descent": result.descent,
        "clear_descent": result.clear_descent,
    }
    (folder / "lr_range_test.json").write_text(json.dumps(summary, indent=2))
    return result


@hydra.main(version_base="1.3", config_path="pkg://lightning_tricks.conf", config_name="lr_find")
@logs_terminal
@exits_on_usage_error
@quiet_unless_verbose
def main(cfg: DictConfig) -> None:
    result = lr_find(cfg)
    if not result.clear_descent:
        print(f"no suggestion: {no_descent_advice(result, cfg.lr_range_test.min_descent)}")
        print(f"curve: {Path(cfg.paths.output_dir) / 'lr_range_test.png'}")
        return
    others = ", ".join(f"{name} {lr:.2e}" for name, lr in sorted(result.suggestions.items()) if name != result.rule)
    print(f"suggested lr: {result.suggestion:.3e} ({result.rule}; also {others})")
    print(f"curve: {Path(cfg.paths.output_dir) / 'lr_range_test.png'}")
