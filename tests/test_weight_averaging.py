"""Lightning's weight averaging, reused through our configs: each runs end to end in `lightning-tricks train`."""

from __future__ import annotations

import pytest
import torch

from lightning_tricks.commands.train import build


@pytest.mark.parametrize("option", ["stochastic_weight_averaging", "ema_weight_averaging"])
def test_weight_averaging_configs_train_and_change_the_final_weights(option: str, compose_train) -> None:
    def final_weights(*extra: str) -> torch.Tensor:
        cfg = compose_train("trainer.max_epochs=3", "recipe=none", "logger=none", *extra)
        datamodule, model, trainer = build(cfg)
        trainer.fit(model, datamodule=datamodule)
        return model.net[-1].weight.detach().clone()

    plain = final_weights()
    averaged = final_weights(f"+callbacks@callbacks.{option}={option}")
    # Same seed, data and steps: only the averaging differs, so the final weights must too.
    assert torch.isfinite(averaged).all() and not torch.equal(plain, averaged)
