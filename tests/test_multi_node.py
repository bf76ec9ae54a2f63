"""Two nodes x one process on loopback, started the two ways clusters start them: torchrun (one
launcher per node) and SLURM (one task per node, Lightning reading the SLURM variables).

Both run the default recipe's checks, ``FullDatasetLoss``, ``DataInspection`` and
``TestTimeAugmentation`` (``tests/jobs/two_nodes.py``). Each node has its own working directory, so
a file in node 1's folder is a file written by a process that is local rank 0 but not global rank
0 (global and local rank confused). Asserted: the same verdicts on both ranks, the exact full-set
loss (sum / count, recomputed here from the last checkpoint), checkpoints and logs written once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

JOB = Path(__file__).resolve().parent / "jobs" / "two_nodes.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path: Path, how: str, *job_args: str) -> list[dict]:
    port = free_port()
    procs = []
    for node in (0, 1):
        folder = tmp_path / f"node{node}"
        folder.mkdir(exist_ok=True)
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WANDB_MODE": "offline"}
        # Nothing of another run's distributed setup (a Trainer in this process sets some of these).
        for name in [n for n in env if n.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))]:
            env.pop(name)
        for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
            env.pop(name, None)
        if how == "torchrun":
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                       "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                       str(JOB), str(folder), *job_args]  # fmt: skip
        else:  # what `srun` sets for a 2-node, 1-task-per-node job
            env.update(
                SLURM_NTASKS="2",
                SLURM_NTASKS_PER_NODE="1",
                SLURM_NNODES="2",
                SLURM_PROCID=str(node),
                SLURM_LOCALID="0",
                SLURM_NODEID=str(node),
                SLURM_JOB_NAME="lt-test",
                SLURM_JOB_ID="4242",
                SLURM_NODELIST="127.0.0.1",
            )
            command = [sys.executable, str(JOB), str(folder), *job_args]
        procs.append(subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return [json.loads((tmp_path / f"node{n}" / f"result-{n}.json").read_text()) for n in (0, 1)]


def exact_val_loss(checkpoint: Path) -> float:
    from lightning_tricks.data import DigitsDataModule
    from lightning_tricks.models import MLP

    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    model.eval()
    dm = DigitsDataModule(seed=0)
    dm.setup("fit")
    x, y = zip(*[dm.datasets["val"][i] for i in range(len(dm.datasets["val"]))], strict=True)
    with torch.no_grad():
        return float(F.cross_entropy(model(torch.stack(x)), torch.as_tensor(y), reduction="sum")) / len(y)


@pytest.mark.slow
@pytest.mark.timeout(900)  # torchrun: three 2-node launches (the run, then 1 epoch and its resume)
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("how", ["torchrun", "slurm"])
def test_two_nodes(tmp_path: Path, how: str) -> None:
    ranks = launch(tmp_path, how)
    assert [(r["global_rank"], r["node_rank"], r["local_rank"], r["world_size"]) for r in ranks] == [
        (0, 0, 0, 2),
        (1, 1, 0, 2),
    ]
    assert ranks[0]["verdicts"] == ranks[1]["verdicts"] and all(ranks[0]["verdicts"].values()), ranks[0]["verdicts"]
    assert ranks[0]["full_loss"] == ranks[1]["full_loss"]
    assert ranks[0]["full_loss"]["val_count"] == 270 and ranks[0]["full_loss"]["test_count"] == 270
    assert ranks[0]["tta"] == ranks[1]["tta"] and ranks[0]["tta"]["count"] == 270
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    # The last epoch's full-set loss is the exact mean over the 270 validation samples at its weights.
    assert ranks[0]["full_loss"]["val"] == pytest.approx(exact_val_loss(node0 / "checkpoints" / "last.ckpt"), rel=1e-5)
    # Written once, by global rank 0: nothing but node 1's own result in its folder.
    assert sorted(p.name for p in node1.rglob("*") if p.is_file()) == ["result-1.json"]
    assert (node0 / "logs" / "metrics.csv").is_file()
    assert list((node0 / "logs").rglob("report.md"))  # DataInspection's report
    # One W&B run, with the media (DataInspection's figures) once, in it.
    (wandb_run,) = (node0 / "logs" / "wandb").glob("offline-run-*-twonodes*")
    assert list(wandb_run.rglob("media/**/*.png"))

    if how == "torchrun":
        # Resume exact on 2 nodes: 1 epoch, then a resume from its last.ckpt to 2 epochs (each node reads it
        # from node 0's folder, as from a shared file system) ends on the uninterrupted run's weights.
        resumed = tmp_path / "resumed"
        resumed.mkdir()
        launch(resumed, how, "1")
        ckpt = resumed / "node0" / "checkpoints" / "last.ckpt"
        again = launch(resumed, how, "2", str(ckpt))
        assert [r["weights_sum"] for r in again] == [ranks[0]["weights_sum"]] * 2
        assert again[0]["full_loss"] == ranks[0]["full_loss"]
        assert (
            len(list((resumed / "node0" / "logs" / "wandb").glob("offline-run-*-twonodes*"))) == 2
        )  # 1 run, 2 sessions
        assert sorted(p.name for p in (resumed / "node1").rglob("*") if p.is_file()) == ["result-1.json"]
