"""Checkpoint keys for stateful callbacks, so that two instances of one callback can share a Trainer.

Lightning stores a callback's ``state_dict`` under ``checkpoint["callbacks"][callback.state_key]``,
which is the class name unless the callback says otherwise, and refuses two stateful callbacks with
one key ("Found more than one stateful callback of type ..."). Lightning's own ``ModelCheckpoint``
and ``EarlyStopping`` build the key from their distinguishing arguments with
``Callback._generate_state_key``; ours do the same, each in its own ``state_key``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class StatefulCallback(Callback):
    """A callback with checkpointed state whose subclass defines ``state_key`` from its arguments.

    The key holds the arguments the checkpointed state depends on (what the instance watches or
    changes: splits, an attribute, a layer, a sweep), so two instances that differ in them keep
    two states. It leaves out arguments a resumed run may change and still expect its state back
    (display settings; a seed where the checkpoint's choice wins), since a resumed run finds its
    state by the key alone. Its values must print the same in every process and run: numbers,
    strings, tuples of them, never a function or an object, whose ``repr`` holds an address.

    Checkpoints written before a callback had its own key hold its state under the bare class name;
    such a state is loaded into an instance whose key the checkpoint lacks. (Lightning still warns
    that the class name has no callback: it compares keys before any hook can translate them.)
    """

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("callbacks")
        legacy = type(self).__qualname__
        # Lightning calls every on_load_checkpoint before any load_state_dict, on the same dict, so the
        # state copied under our key here is what load_state_dict receives.
        if isinstance(states, dict) and self.state_key not in states and legacy in states:
            states[self.state_key] = states[legacy]
