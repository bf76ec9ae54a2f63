"""Hyper-parameter search (recipe 5) on Optuna, behind the ``tune`` command.

- :mod:`~lightning_tricks.tuning.study`: the objective (one trial = one ``train`` run), samplers,
  pruners, storages, and the worker loop that shares a study between processes and machines;
- :mod:`~lightning_tricks.tuning.report`: what a finished study leaves (CSV, best trial, plots, table).

The search space's parsing is in :mod:`lightning_tricks.functional.search_space`; the command,
which composes these, in :mod:`lightning_tricks.commands.tune`.
"""
