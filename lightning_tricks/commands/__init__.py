"""The ``lightning-tricks`` commands: one module per command, each a Hydra application with a ``main``.

:mod:`~lightning_tricks.commands.cli` dispatches ``lightning-tricks <command>`` to them. Commands sit
at the top of the package: they may import anything in it, and nothing outside this package imports
them (a test checks it).
"""
