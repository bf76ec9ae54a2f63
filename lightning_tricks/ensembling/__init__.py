"""Checkpoint ensembles (recipe 6): load checkpoints safely, evaluate each member and their average.

:mod:`~lightning_tricks.ensembling.checkpoints` loads and evaluates; the math (log-mean-exp of the
members' probabilities, streamed sums) is in :mod:`lightning_tricks.functional.ensemble`. Used by the
:class:`~lightning_tricks.callbacks.CheckpointEnsemble` callback and the ``ensemble`` command.
"""

from lightning_tricks.ensembling.checkpoints import (
    CheckpointError,
    EnsembleReport,
    MemberFailure,
    MemberResult,
    ensemble_sums,
    evaluate_checkpoints,
    expand_checkpoints,
    load_member,
    load_members,
    load_state_dict,
    no_member_message,
)

__all__ = [
    "CheckpointError",
    "EnsembleReport",
    "MemberFailure",
    "MemberResult",
    "ensemble_sums",
    "evaluate_checkpoints",
    "expand_checkpoints",
    "load_member",
    "load_members",
    "load_state_dict",
    "no_member_message",
]
