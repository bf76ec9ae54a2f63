"""Read back what an offline W&B run wrote: its history, summary and config, from the run's ``.wandb`` file.

Offline runs keep everything in one transaction log (``run-<id>.wandb``,
LevelDB's log format holding protobuf ``Record`` messages — what ``wandb
sync`` uploads); media go to ``files/media/``. Tests (ours, and users' CI)
use this to assert on what was logged, with the real W&B and no account.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# LevelDB log format as W&B writes it: a 7-byte file header, then 32 KiB blocks of records, each with a
# 7-byte header (crc32, length, type); a record too long for a block is split FIRST/MIDDLE.../LAST.
_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """The logged content of an offline run: one dict per ``log`` call, the final summary, the config."""

    path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def values(self, key: str) -> list[Any]:
        """Every logged value of ``key``, in order."""
        return [row[key] for row in self.history if key in row]


def _records(path: Path):
    with path.open("rb") as f:
        ident, magic, _version = struct.unpack("<4sHB", f.read(_HEADER))
        if ident != b":W&B" or magic != 0xBEE1:
            raise ValueError(f"{path} is not a W&B transaction log (header {ident!r}, {magic:#x}).")
        index, pending = _HEADER, b""
        while True:
            space_left = _BLOCK - index % _BLOCK
            if space_left < _HEADER:  # block trailer: zero padding
                f.read(space_left)
                index += space_left
            header = f.read(_HEADER)
            if len(header) < _HEADER:
                return
            _, length, kind = struct.unpack("<IHB", header)
            data = f.read(length)
            index += _HEADER + length
            if kind == _FULL:
                yield data
            elif kind == _FIRST:
                pending = data
            elif kind == _MIDDLE:
                pending += data
            elif kind == _LAST:
                yield pending + data
                pending = b""


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: str | Path, timeout: float = 30.0) -> OfflineRun:
    """Parse ``<run_dir>/run-*.wandb`` (``run_dir`` is ``.../wandb/offline-run-<time>-<id>``).

    ``finish()`` can return before W&B's writer process has flushed the log (seen on a loaded
    machine: a read right after it found no history at all), so the log is re-read until it holds
    the run's exit record, for up to ``timeout`` seconds; after that, what is there is returned.
    """
    run_dir = Path(run_dir)
    deadline = time.monotonic() + timeout
    while True:
        run, finished = _parse(run_dir)
        if finished or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


def _parse(run_dir: Path) -> tuple[OfflineRun, bool]:
    from wandb.proto import wandb_internal_pb2

    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"No run-*.wandb transaction log in {run_dir}.")
    run, finished = OfflineRun(path=run_dir), False
    for data in _records(logs[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append({_item_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_item_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "config":
            run.config.update({_item_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "exit":
            finished = True
    return run, finished
