"""Small helpers every layer shares, one concern per module (no grab-bag):

- :mod:`~lightning_tricks.utilities.arguments`: argument checks with clear errors, ``UsageError`` (imports
  nothing of ours);
- :mod:`~lightning_tricks.utilities.protocol`: how a callback meets a user's model (batches, outputs, losses);
- :mod:`~lightning_tricks.utilities.sharding`: exact, unpadded per-rank shards of a loader;
- :mod:`~lightning_tricks.utilities.isolation`: side computations that leave the run untouched;
- :mod:`~lightning_tricks.utilities.state_keys`: checkpoint keys of stateful callbacks (two instances coexist);
- :mod:`~lightning_tricks.utilities.media`: images, tables and scalars to W&B, TensorBoard or files;
- :mod:`~lightning_tricks.utilities.plots`: Matplotlib figures without a display.

Nothing is imported here, so that importing one helper does not import the others (``--help`` stays fast).
"""
