"""Read back what an offline W&B run wrote: its name, group and tags, history, summary, config, metric
definitions and tables, from the run's ``.wandb`` file.

Offline runs keep everything in one transaction log (``run-<id>.wandb``,
LevelDB's log format holding protobuf ``Record`` messages — what ``wandb
sync`` uploads); media go to ``files/media/``. A table is also an artifact
whose files (the table's JSON, its pictures) W&B stages before the upload; the
log names each by its absolute path. Tests (ours, and users' CI) use this to
assert on what was logged, with the real W&B and no account.
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
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    job_type: str = ""
    #: ``define_metric`` declarations, by metric name or glob: ``{"step_metric": ..., "summary": [...], ...}``
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: logged artifacts: ``{"name", "type", "client_id", "files": {path in the artifact: staged file}}``
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str) -> list[Any]:
        """Every logged value of ``key``, in order."""
        return [row[key] for row in self.history if key in row]

    def staged_files(self) -> list[Path]:
        """Every file W&B staged for this run's artifacts (uploaded by ``wandb sync``)."""
        return [Path(f) for artifact in self.artifacts for f in artifact["files"].values()]

    def table(self, key: str) -> list[dict[str, Any]]:
        """The rows of the table logged under ``key``, as W&B shows it: the last logged table, or every
        increment of an incremental one, one dict per row. Picture cells are the staged PNG files' paths."""
        logs = [row for row in self.history if f"{key}/artifact_path" in row]
        if not logs:
            raise KeyError(f"No table logged under {key!r} in {self.path}.")
        if logs[-1].get(f"{key}/log_mode") != "INCREMENTAL":
            logs = logs[-1:]
        rows = []
        for log in logs:
            artifact, entry = self._artifact_entry(log[f"{key}/artifact_path"])
            table = json.loads(Path(artifact["files"][entry]).read_text())
            for values in table["data"]:
                cells = [
                    Path(artifact["files"][v["path"]]) if isinstance(v, dict) and v.get("_type") == "image-file" else v
                    for v in values
                ]
                rows.append(dict(zip(table["columns"], cells, strict=True)))
        return rows

    def _artifact_entry(self, uri: str) -> tuple[dict[str, Any], str]:
        # "wandb-client-artifact://<client id>[:latest]/<path in the artifact>"
        client_id, _, entry = uri.removeprefix("wandb-client-artifact://").partition("/")
        client_id = client_id.split(":")[0]
        artifact = next((a for a in self.artifacts if a["client_id"] == client_id), None)
        if artifact is None:
            raise KeyError(f"No artifact {client_id!r} (from {uri!r}) in {self.path}.")
        return artifact, entry


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


def _artifact(artifact: Any) -> dict[str, Any]:
    entries = list(artifact.manifest.contents)
    files = {e.path: e.local_path for e in entries}
    if artifact.manifest.manifest_file_path:  # large manifests: written to a gzipped JSON-lines file
        import gzip

        with gzip.open(artifact.manifest.manifest_file_path, "rt") as f:
            for line in f:
                entry = json.loads(line)
                files[entry["path"]] = entry.get("local_path")
    return {"name": artifact.name, "type": artifact.type, "client_id": artifact.client_id, "files": files}


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
        elif kind == "run":
            run.name, run.group = record.run.display_name, record.run.run_group
            run.tags, run.job_type = list(record.run.tags), record.run.job_type
        elif kind == "metric":
            metric = record.metric
            summary = [f.name for f, on in metric.summary.ListFields() if on]
            run.metrics[metric.name or metric.glob_name] = {
                "step_metric": metric.step_metric,
                "summary": summary,
                "goal": metric.goal,
                "step_sync": metric.options.step_sync,
            }
        elif kind == "artifact":
            run.artifacts.append(_artifact(record.artifact))
        elif kind == "exit":
            finished = True
    return run, finished
