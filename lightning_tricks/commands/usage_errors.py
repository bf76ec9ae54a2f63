"""How a ``lightning-tricks`` command ends on a mistake the user can fix (a :class:`UsageError`): one
line on stderr naming the argument, the value and what is allowed; exit code 2; no traceback; and no
run folder left behind. Any other exception is a bug and keeps Hydra's traceback.

Every command's Hydra ``main`` is wrapped by :func:`exits_on_usage_error`. The catch sits there, inside
Hydra's job, not around the call in :mod:`lightning_tricks.commands.cli`: Hydra's ``run_job`` catches
every exception of the command and prints its traceback before the dispatcher could see one.

Hydra creates the run folder, and writes ``.hydra/`` and the log into it, before the command runs.
:class:`NewRunFolder`, a Hydra callback in every command's config (``hydra.callbacks``), notes at the
start of the run which folder on the way to it does not exist yet; on a usage error that folder is
removed, and only if it holds nothing but what Hydra wrote. A folder that existed before is never
touched.
"""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lightning_tricks.utilities.arguments import UsageError

# The outermost folder this process's Hydra run will create (None: it exists, or the callback is not
# configured). Module state, because Hydra gives the callback and the command no object to share.
_created: Path | None = None


def first_missing(folder: str | Path) -> Path | None:
    """The outermost folder on the way to ``folder`` that does not exist yet; None if ``folder`` exists."""
    folder = Path(folder).absolute()
    if folder.exists():
        return None
    while not folder.parent.exists():
        folder = folder.parent
    return folder


def holds_only_hydra_files(folder: Path) -> bool:
    """Whether every file under ``folder`` is one Hydra writes before a command runs: ``.hydra/*``,
    the job's ``*.log`` and a multirun's ``multirun.yaml``."""
    for path in folder.rglob("*"):
        inside_hydra = ".hydra" in path.relative_to(folder).parts[:-1]
        if path.is_file() and not (inside_hydra or path.suffix == ".log" or path.name == "multirun.yaml"):
            return False
    return True


class NewRunFolder(Callback):
    """Hydra callback: note the folder this run will create, before Hydra creates it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _created
        _created = first_missing(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _created
        _created = first_missing(config.hydra.sweep.dir)


def remove_new_run_folder() -> None:
    """Remove the folder Hydra created for this run, if it holds only Hydra's own files."""
    global _created
    created, _created = _created, None
    if created is None or not created.is_dir() or not holds_only_hydra_files(created):
        return
    run_dir = Path(HydraConfig.get().runtime.output_dir).absolute()
    if run_dir == created or created in run_dir.parents:  # the folder noted is the one this job runs in
        shutil.rmtree(created, ignore_errors=True)


def exits_on_usage_error(command: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a command's Hydra ``main``: a :class:`UsageError` becomes one line on stderr and exit code 2."""

    @functools.wraps(command)
    def run(cfg: DictConfig) -> Any:
        try:
            return command(cfg)
        except UsageError as error:
            remove_new_run_folder()
            name = HydraConfig.get().job.name.replace("_", "-")
            message = " ".join(str(error).split())  # one line, whatever the message's own line breaks
            print(f"lightning-tricks {name}: {message}", file=sys.stderr)
            raise SystemExit(2) from None  # a SystemExit passes through Hydra's job untouched

    return run
