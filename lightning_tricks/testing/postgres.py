"""A throwaway PostgreSQL server for tests: several tune workers sharing one real database.

``with postgres_server() as url:`` initialises a cluster in a temporary folder,
starts it on a free loopback port (trust authentication, nothing listening
outside 127.0.0.1), yields an SQLAlchemy URL Optuna accepts, and stops and
deletes it afterwards. It uses Debian's ``postgresql`` package binaries
(``.ci/run`` installs them); :func:`find_postgres` returns None where they are
missing, so a test can skip with a reason instead of failing on a machine
without them.

PostgreSQL refuses to run as root, so when this process is root the server
runs as the ``postgres`` system user that the Debian package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def find_postgres() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (newest Debian version first), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def postgres_server(timeout: float = 60) -> Iterator[str]:
    """Start a fresh server; yield ``postgresql+psycopg2://postgres@127.0.0.1:<port>/postgres``."""
    bin_dir = find_postgres()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found; install Debian's `postgresql` package.")
    root = Path(tempfile.mkdtemp(prefix="lt-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    run = {"check": True, "capture_output": True, "text": True, "env": env, "cwd": root}
    try:
        subprocess.run(
            _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]), **run
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_server_user(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"]
            ),
            **run,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while True:  # pg_ctl -w waits for the socket; make sure TCP answers too
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections on port {port} within {timeout} s.")
            time.sleep(0.1)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as err:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        raise RuntimeError(f"PostgreSQL failed to start: {err.stderr}{err.stdout}\n{log}") from err
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                capture_output=True,
                env=env,
                cwd=root,
            )
        shutil.rmtree(root, ignore_errors=True)
