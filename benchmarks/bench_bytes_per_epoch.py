"""Bytes a `lightning-tricks train` run writes per epoch: flat in the epoch number, or growing?

A cost that grows with the epoch number (a table logged again whole every epoch) makes a long run's
files, and its W&B upload, quadratic in its length. This runs the default recipe (W&B offline) for
E1 < E2 < E3 epochs and measures the run folder (W&B files, checkpoints, logs, media) after each. The
marginal bytes per epoch between E1 and E2 and between E2 and E3 must be the same (ratio ≈ 1.0); it
is printed per part of the run folder, so a part that grows shows where.

Usage: python benchmarks/bench_bytes_per_epoch.py [--epochs 5 25 50] [ARGS overrides...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def sizes(run: Path) -> dict[str, int]:
    """Bytes under each top part of the run folder (W&B's offline run split into its files and media)."""
    parts: dict[str, int] = {}
    for path in run.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(run).parts
        part = relative[0]
        if part == "wandb" and len(relative) > 2:
            part = "wandb/media" if "media" in relative else "wandb/run"
        parts[part] = parts.get(part, 0) + path.stat().st_size
    return parts


def run(epochs: int, overrides: list[str], where: Path) -> dict[str, int]:
    folder = where / f"epochs{epochs}"
    command = [sys.executable, "-m", "lightning_tricks", "train", f"trainer.max_epochs={epochs}", "test=false"]
    command += [*overrides, f"hydra.run.dir={folder}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run(command, check=True, env=env, cwd=where, capture_output=True, text=True)
    return sizes(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, nargs=3, default=[5, 25, 50])
    parser.add_argument("overrides", nargs="*", help="train overrides, e.g. data=mnist1d model=cnn")
    args = parser.parse_args()
    e1, e2, e3 = args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        measured = {e: run(e, args.overrides, where) for e in (e1, e2, e3)}
    parts = sorted(set().union(*measured.values()))
    print(f"bytes written by `lightning-tricks train {' '.join(args.overrides)}` (default recipe, W&B offline)")
    print(f"{'part':<16}" + "".join(f"{f'{e} epochs':>14}" for e in (e1, e2, e3)), end="")
    print(f"{f'/epoch {e1}-{e2}':>16}{f'/epoch {e2}-{e3}':>16}{'ratio':>8}")
    for part in [*parts, "total"]:
        got = [sum(measured[e].values()) if part == "total" else measured[e].get(part, 0) for e in (e1, e2, e3)]
        early, late = (got[1] - got[0]) / (e2 - e1), (got[2] - got[1]) / (e3 - e2)
        ratio = f"{late / early:.2f}" if early > 0 else ("-" if late == 0 else "inf")
        print(f"{part:<16}" + "".join(f"{g:>14,}" for g in got) + f"{early:>16,.0f}{late:>16,.0f}{ratio:>8}")
    print("ratio: bytes per epoch late in the run / early in the run (1.00: linear in the run's length)")


if __name__ == "__main__":
    main()
