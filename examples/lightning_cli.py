"""lightning-tricks with Lightning's own CLI: every class configured from YAML by jsonargparse.

``LightningCLI`` needs jsonargparse, the package's ``cli`` extra: ``pip install ".[cli]"``. It reads
the constructors' type hints to build a command line and a config format; the config next to this
file lists the default recipe's callbacks (seed, bias init, the checks, the monitors) and our
``DigitsDataModule`` by class path. Run it from the repository root::

    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml
    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml --trainer.max_epochs=2 \\
        --model.hidden_sizes='[32]' --model.optimizer.lr=0.01
    python examples/lightning_cli.py fit --print_config --config examples/lightning_cli.yaml  # all options
"""

from __future__ import annotations

import logging
from operator import attrgetter

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_tricks.data import ArrayDataModule
from lightning_tricks.models import MLP


class TricksCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model's input size, output width and task are facts about the data, not settings: our data
        # modules expose them as attributes, not constructor arguments. So the links are applied on
        # *instantiate*: the data module is built first, then these attributes are passed to the model.
        for key in ("input_shape", "num_outputs", "task"):
            parser.link_arguments("data", f"model.{key}", compute_fn=attrgetter(key), apply_on="instantiate")


def main() -> None:
    # The checks' verdicts are log records of the `lightning_tricks` loggers: show the passes too.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    TricksCLI(
        MLP,
        # Any of our data modules, chosen in the config by `class_path` (DigitsDataModule there).
        ArrayDataModule,
        subclass_mode_data=True,
        # LightningCLI seeds (`seed_everything:` in the config) *before* it builds the model, so the
        # initial weights are reproducible; SeedEverything then takes over at fit time.
        seed_everything_default=0,
    )


if __name__ == "__main__":
    main()
