"""The `lightning-tricks` command's dispatcher: one sub-command per job, each a Hydra application
in its own module of :mod:`lightning_tricks.commands`."""

from __future__ import annotations

import os
import sys

# Sub-command -> (its module in lightning_tricks.commands, with a Hydra `main`; one-line help).
COMMANDS = {
    "train": ("train", "train a model on the configured data (Hydra overrides follow)"),
    "preflight": ("preflight", "run the recipe's before-you-train checks; exit 1 if any fails"),
    "inspect": ("inspect", "look at the data: balance, duplicates, leakage, NaN, outliers"),
    "lr-find": ("lr_find", "LR range test on the configured model and data; prints the suggestion"),
    "tune": ("tune", "hyper-parameter search on Optuna (random/QMC/TPE/grid), resumable, parallel"),
    "ensemble": ("ensemble", "average several checkpoints' predictions; ensemble vs each member"),
}

# Lightning's DDP launcher starts ranks 1..N-1 by re-running `sys.argv` with Hydra's overrides
# appended. Hydra owns sys.argv after the sub-command is removed, so the sub-command travels to those
# child processes in the environment instead.
_COMMAND_ENV = "LIGHTNING_TRICKS_COMMAND"

USAGE = """usage: lightning-tricks <command> [hydra overrides] [--help]

Karpathy's recipe for training neural networks, as PyTorch Lightning callbacks.

commands:
{commands}

`lightning-tricks <command> --help` shows the command's config groups and options.
Example: lightning-tricks train data=mnist1d model=cnn trainer.max_epochs=5 logger=csv
"""


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], argv[1:]
        os.environ[_COMMAND_ENV] = command
    elif os.environ.get(_COMMAND_ENV) in COMMANDS and "LOCAL_RANK" in os.environ:
        command, rest = os.environ[_COMMAND_ENV], argv  # a DDP rank re-launched by Lightning
    else:
        listing = "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
        if argv and argv[0] == "--version":
            from importlib.metadata import version  # not `lightning_tricks.__version__`: nothing imports upward

            print(f"lightning-tricks {version('lightning-tricks')}")
            return 0
        print(
            USAGE.format(commands=listing),
            file=sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr,
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(
                f"lightning-tricks: unknown command {argv[0]!r}; choose one of {sorted(COMMANDS)}.",
                file=sys.stderr,
            )
            return 2
        return 0
    import importlib

    # `model._target_=mymodule.MyModel` names a module of the user's project, in the folder they run the
    # command from. Hydra imports `_target_`s from sys.path, which for an installed script holds the
    # script's folder, not the current one (`python -m` would add it). Appended, not prepended: a file
    # of the user's never shadows an installed package. DDP ranks re-launched by Lightning come here too.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    if command == "train" and "LOCAL_RANK" not in os.environ:
        # `ckpt_path=` of a run's checkpoint continues that run (its folder, config, logger); a DDP rank
        # re-launched by Lightning already has the rewritten arguments.
        from lightning_tricks.commands.resume import resume_arguments
        from lightning_tricks.utilities.arguments import UsageError

        try:
            rest = resume_arguments(rest)
        except UsageError as error:
            print(f"lightning-tricks train: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
    sys.argv = [sys.argv[0], *rest]
    if any(a in ("--help", "-h", "--hydra-help") for a in rest):
        # Help needs the config only: answered without importing the command (Lightning and torch alone
        # take seconds to import). Each command's config has the command module's name.
        _hydra_help(COMMANDS[command][0])
        return 0
    module = importlib.import_module(f"lightning_tricks.commands.{COMMANDS[command][0]}")
    module.main()
    return 0


def _hydra_help(config_name: str) -> None:
    """Hydra's ``--help`` / ``--hydra-help`` for the command whose config is ``config_name``."""
    import hydra

    def no_run(cfg: object) -> None:  # Hydra prints the help and exits before calling it
        raise AssertionError("help only")

    hydra.main(version_base="1.3", config_path="pkg://lightning_tricks.conf", config_name=config_name)(no_run)()


if __name__ == "__main__":
    sys.exit(main())
