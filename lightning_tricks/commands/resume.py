"""``lightning-tricks train ckpt_path=<a checkpoint of a run>`` continues that run, not a new one.

Without this, a resume composed the default config plus whatever overrides were typed again, in a
new output folder, with a new W&B run: a seed, learning rate or data set left out of the command
silently changed the experiment, and the best checkpoint of the run before the resume was forgotten.

Here the dispatcher (:mod:`lightning_tricks.commands.cli`) rewrites the command line before Hydra
reads it, when the checkpoint lies in a run folder that holds its config (``<run>/.hydra/config.yaml``):

* the config is that file (``--config-dir <run>/.hydra --config-name config``), not a new composition;
* the run folder is the same (``hydra.run.dir=<run>``): its checkpoints, so ``ModelCheckpoint`` keeps
  its best-k across the resume (Lightning restores it when the folder is the same), its log file;
* the same W&B run id, with ``resume="allow"``; a CSV logger writes ``<csv>/resumed-<n>/metrics.csv``,
  since Lightning's CSV logger deletes the ``metrics.csv`` it finds in its folder;
* overrides typed on resume are applied only where they do not change the experiment
  (:data:`SAFE_ON_RESUME`, e.g. ``trainer.max_epochs=40``); any other change is refused with one line
  naming it, unless ``resume.allow_changes=true``. Config-group choices (``data=mnist1d``) are refused.

``hydra.run.dir=`` on the command line (or any ``--config-*`` option) opts out: the run starts in that
folder from the config composed as usual, as before.
"""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path
from typing import Any

from lightning_tricks.utilities.arguments import UsageError

#: Overrides a resumed run may take: they end or evaluate the run, they do not change what it trains.
SAFE_ON_RESUME = ("trainer.max_epochs", "trainer.max_steps", "eval_ckpt", "test")
_ALLOW = "resume.allow_changes"
_MISSING = object()


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint was written in (the nearest folder above it with ``.hydra/config.yaml``)."""
    for folder in checkpoint.resolve().parents:
        if (folder / ".hydra" / "config.yaml").is_file():
            return folder
    return None


def _is_config_group(key: str) -> bool:
    return (importlib.resources.files("lightning_tricks.conf") / key).is_dir()


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def resume_arguments(argv: list[str]) -> list[str]:
    """``argv`` of ``lightning-tricks train``, rewritten to continue the run its ``ckpt_path`` belongs to.

    Returned unchanged when it is not such a resume. Raises :class:`UsageError` for a refused override.
    """
    if any(a.startswith("-") for a in argv) or any(a.split("=", 1)[0] == "hydra.run.dir" for a in argv):
        return argv  # Hydra options (--config-dir, -m, --help, ...) or an explicit folder: the user decides
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    from omegaconf import OmegaConf

    try:
        overrides = OverridesParser.create().parse_overrides(argv)
    except OverrideParseException:
        return argv  # Hydra reports it, as for any run
    by_key = {o.key_or_group: o for o in overrides}
    ckpt = by_key.get("ckpt_path")
    if ckpt is None or not isinstance(ckpt.value(), str) or not Path(ckpt.value()).is_file():
        return argv  # not a resume, or a missing file (the train command says so)
    checkpoint = Path(ckpt.value()).resolve()
    run = run_folder_of(checkpoint)
    if run is None:
        return argv  # a checkpoint from elsewhere: a new run, as before
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")

    allow = _ALLOW in by_key and _truthy(by_key[_ALLOW].value())
    applied, refused = [], []
    for override in overrides:
        key = override.key_or_group
        if key in ("ckpt_path", _ALLOW):
            continue
        if override.package is not None or _is_config_group(key):
            raise UsageError(
                f"`{override.input_line}` chooses a config-group option, but resuming from {checkpoint} continues "
                f"that run with its own config ({run}/.hydra/config.yaml); to train another configuration, start "
                f"a new run: add `hydra.run.dir=<a new folder>`."
            )
        old = OmegaConf.select(saved, key, default=_MISSING, throw_on_resolution_failure=False)
        new = None if override.is_delete() else override.value()
        if old is not _MISSING and not override.is_delete() and old == new:
            continue  # the run's own value, typed again
        if key in SAFE_ON_RESUME or allow:
            applied.append(override.input_line)
        else:
            shown = "not set" if old is _MISSING else f"{key}={old}"
            refused.append(f"`{override.input_line}` (the run has {shown})")
    if refused:
        raise UsageError(
            f"resuming {run} continues that run with its own config; {', '.join(refused)} would change the "
            f"experiment. On resume only {', '.join(SAFE_ON_RESUME)} may change; add `{_ALLOW}=true` to apply "
            f"the change anyway, or `hydra.run.dir=<a new folder>` to start a new run from the checkpoint."
        )
    if allow and applied:
        print(f"lightning-tricks train: {_ALLOW}=true: the resumed run applies {' '.join(applied)}", file=sys.stderr)
    # The run's own config (<run>/.hydra/config.yaml), as it ran: composing the defaults and the first
    # session's overrides again would change the experiment wherever this package's defaults changed since.
    # The `hydra:` settings of `train.yaml` are not in that file: the console and log-file format is given
    # again here (the folder is given; its UsageError and multirun callbacks have nothing to do on a resume).
    return [
        "--config-dir",
        str(run / ".hydra"),
        "--config-name",
        "config",
        f"hydra.run.dir={run}",
        "++hydra.job_logging.formatters.message.format='%(message)s'",
        "++hydra.job_logging.handlers.console.formatter=message",
        *applied,
        f"ckpt_path={checkpoint}",
        *_logger_continuation(saved, run, _first_name(run)),
    ]


def _first_name(run: Path) -> str:
    """The W&B run name the first session had: its overrides as typed (see ``wandb_runs.identity``)."""
    from omegaconf import OmegaConf

    overrides = run / ".hydra" / "overrides.yaml"
    return " ".join(str(o) for o in OmegaConf.load(overrides)) if overrides.is_file() else ""


def _logger_continuation(saved: Any, run: Path, name: str) -> list[str]:
    """Overrides that make the run's logger continue its history instead of starting another.

    ``name``: the W&B run's name as the first session gave it (its overrides), kept where the config
    leaves the name empty, since the resumed session's own overrides differ.
    """
    from omegaconf import OmegaConf

    logger = OmegaConf.select(saved, "logger", default=None)
    target = str(logger.get("_target_", "")) if logger is not None and OmegaConf.is_dict(logger) else ""
    if target.endswith("WandbLogger"):
        runs = sorted((run / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
        if runs:
            continued = [f"++logger.id={runs[-1].name.rsplit('-', 1)[1]}", "++logger.resume=allow"]
            if name and not logger.get("name"):
                quoted = name.replace("\\", "\\\\").replace("'", "\\'")
                continued.append(f"++logger.name='{quoted}'")
            return continued
    if target.endswith("CSVLogger"):
        folder_name = OmegaConf.select(saved, "logger.name", default="csv", throw_on_resolution_failure=False)
        folder = run / str(folder_name or "")
        n = 1 + sum(1 for p in folder.glob("resumed-*") if p.is_dir())
        return [f"++logger.version=resumed-{n}"]
    return []
