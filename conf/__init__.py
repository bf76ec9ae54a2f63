"""Hydra configs of lightning-tricks, importable as ``pkg://lightning_tricks.conf``.

The folder sits at the top of the repository (``conf/``) and is installed as
this package, so the configs are found from a wheel as well as a checkout.
"""
