"""The recipe's stages end to end: test accuracy of skeleton → overfit → regularize → full, TTA, ensembles.

What. For each data set (the digits CNN, the MNIST-1D CNN) and each seed, the real Hydra config
(``conf/train.yaml``, composed as the tests do) is trained with ``model=cnn`` and
``recipe=skeleton``, ``overfit``, ``regularize`` and ``full`` through ``lightning_tricks.commands.train.train``
(so every stage's callbacks run: preflight checks, full-set val loss, checkpoints, early stopping in
regularize/full, ...), evaluated on the best checkpoint by val loss (``eval_ckpt=best``). The split
is fixed (``data.seed=0``): every stage and seed sees the same train/val/test sets; ``seed`` varies
the initial weights, shuffling, dropout and augmentation. Reported, mean ± sample std over seeds:

* test accuracy per stage;
* test-time augmentation (stage ``full``: the mean of the identity and one-step shifted views) vs
  the same checkpoint without it, with the per-seed difference;
* the ``full`` stage's ensemble of its top-3 checkpoints vs its best member (``test/ensemble_*``);
* a seed ensemble: the ``regularize`` stage's best checkpoints of ``--ensemble-seeds`` seeds (the
  ones above plus more if needed), averaged with ``lightning_tricks.ensembling.evaluate_checkpoints``
  on the shared test set, vs its best member and the members' mean.

Baseline. The previous stage (skeleton: the small CNN without a fully connected head; overfit: the
same with ``hidden_sizes=[512, 256]``; regularize: plus augmentation, dropout 0.2, AdamW weight decay
0.05 and early stopping; full: plus TTA and a checkpoint ensemble, no change to training), no TTA,
and the single best member for the ensembles. Early stopping itself: benchmarks/bench_early_stopping.py.

Size. Every stage trains at most ``--epochs`` epochs (default 100; early stopping in regularize/full
may stop sooner) at the configs' learning rate (Adam/AdamW 1e-2 for the CNN). MNIST-1D uses
``data.num_samples=--mnist1d-samples`` (default 3000, not the config's 5000) so that the default
benchmark (2 data sets x 3 seeds x 4 stages + 2 more regularize seeds) fits in about 15 minutes on
two busy CPU cores. Fewer epochs than a real run: the regularised stages, which learn more slowly,
are the ones this shortchanges.

Usage: python benchmarks/bench_recipe_stages.py [--data digits mnist1d] [--seeds 3] [--ensemble-seeds 5]
       [--epochs 100] [--mnist1d-samples 3000] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

STAGES = ("skeleton", "overfit", "regularize", "full")
DATA_SEED = 0


def compose(data: str, stage: str, seed: int, output_dir: Path, args: argparse.Namespace):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    overrides = [
        f"data={data}",
        "model=cnn",
        f"recipe={stage}",
        f"seed={seed}",
        f"data.seed={DATA_SEED}",
        "logger=none",
        f"paths.output_dir={output_dir}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_model_summary=false",
        "trainer.enable_progress_bar=false",
        "callbacks.rich_progress_bar=null",
    ]
    if data == "mnist1d":
        overrides.append(f"data.num_samples={args.mnist1d_samples}")
    with initialize_config_module(config_module="lightning_tricks.conf", version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


class EpochCounter(Callback):
    """Records how many epochs fit ran (early stopping may end it before ``max_epochs``)."""

    epochs: int | None = None

    def on_train_end(self, trainer, pl_module) -> None:
        self.epochs = trainer.current_epoch


def run_stage(data: str, stage: str, seed: int, root: Path, args: argparse.Namespace) -> dict:
    from lightning_tricks.commands import train as train_module

    build, counter = train_module.build, EpochCounter()

    def build_and_count(cfg):
        datamodule, model, trainer = build(cfg)
        trainer.callbacks.append(counter)
        return datamodule, model, trainer

    cfg = compose(data, stage, seed, root / data / stage / f"seed{seed}", args)
    train_module.build = build_and_count
    try:
        start = time.perf_counter()
        summary = train_module.train(cfg)
        seconds = time.perf_counter() - start
    finally:
        train_module.build = build
    return {"metrics": summary.metrics, "best": summary.best_checkpoint, "seconds": seconds, "epochs": counter.epochs}


def seed_ensemble(data: str, paths: list[str], root: Path, args: argparse.Namespace):
    from lightning_tricks.commands.train import build_data_and_model
    from lightning_tricks.ensembling import evaluate_checkpoints

    cfg = compose(data, "regularize", 0, root / data / "ensemble", args)
    datamodule, template = build_data_and_model(cfg)
    datamodule.setup("test")
    return evaluate_checkpoints(paths, template, datamodule.test_dataloader(), datamodule.task, device="cpu")


def ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * scale:.{digits}f} ± {spread:.{digits}f}"


def report(data: str, runs: dict, ensemble, seeds: list[int], args: argparse.Namespace) -> None:
    print(f"\n## {data} CNN (test accuracy %, mean ± std over seeds {seeds}, max {args.epochs} epochs)\n")
    print("| stage | test acc | val acc | epochs run | s/run | notes |")
    print("| --- | --- | --- | --- | --- | --- |")
    notes = {
        "skeleton": "small CNN, no regularisation",
        "overfit": "+ FC head [512, 256]",
        "regularize": "+ shift/rotate aug, dropout 0.2, AdamW wd 0.05, early stopping",
        "full": "regularize + TTA/ensemble at test (acc without TTA)",
    }
    for stage in STAGES:
        rs = [runs[stage, s] for s in seeds]
        acc = [r["metrics"]["test/acc"] for r in rs]
        val = [r["metrics"]["val/acc"] for r in rs]
        epochs = "/".join(str(r["epochs"]) for r in rs)
        secs = statistics.fmean(r["seconds"] for r in rs)
        print(f"| {stage} | {ms(acc)} | {ms(val)} | {epochs} | {secs:.1f} | {notes[stage]} |")

    full = [runs["full", s]["metrics"] for s in seeds]
    no_tta = [m["tricks/tta/test_acc_no_tta"] for m in full]
    tta = [m["tricks/tta/test_acc"] for m in full]
    deltas = " / ".join(f"{(b - a) * 100:+.1f}" for a, b in zip(no_tta, tta, strict=True))
    print("\n| TTA (stage full) | no TTA | TTA | Δ per seed (points) |")
    print("| --- | --- | --- | --- |")
    print(f"| test acc | {ms(no_tta)} | {ms(tta)} | {deltas} |")

    print("\n| ensemble | members | best member | ensemble | Δ per seed / mean member |")
    print("| --- | --- | --- | --- | --- |")
    best = [m["test/ensemble_best_member_acc"] for m in full]
    ens = [m["test/ensemble_acc"] for m in full]
    members = "/".join(str(int(m["test/ensemble_members"])) for m in full)
    deltas = " / ".join(f"{(b - a) * 100:+.1f}" for a, b in zip(best, ens, strict=True))
    print(f"| top-3 checkpoints of one run (full) | {members} | {ms(best)} | {ms(ens)} | {deltas} |")
    if ensemble is not None:
        accs = [m.metric for m in ensemble.members]
        best_loss = min(m.loss for m in ensemble.members)
        print(
            f"| best checkpoints of {len(accs)} seeds (regularize) | {len(accs)} | "
            f"{ensemble.best_member.metric * 100:.1f} | {ensemble.ensemble_metric * 100:.1f} | "
            f"mean member {ms(accs)}; loss {ensemble.ensemble_loss:.3f} vs best {best_loss:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["digits", "mnist1d"], choices=["digits", "mnist1d"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ensemble-seeds", type=int, default=5, help="0: no seed ensemble")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--mnist1d-samples", type=int, default=3000)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="(sizing only)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_tricks"):
        logging.getLogger(name).setLevel(logging.ERROR)

    seeds = list(range(args.seeds))
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_recipe_stages_") as tmp:
        root = Path(tmp)
        for data in args.data:
            runs = {}
            for seed in seeds:
                for stage in args.stages:
                    runs[stage, seed] = r = run_stage(data, stage, seed, root, args)
                    print(
                        f"[{data} seed {seed} {stage}] test acc {r['metrics']['test/acc']:.4f}, "
                        f"{r['epochs']} epochs, {r['seconds']:.1f} s",
                        flush=True,
                    )
            if args.stages != list(STAGES):
                continue
            ensemble = None
            if args.ensemble_seeds > 1:
                paths = [runs["regularize", s]["best"] for s in seeds[: args.ensemble_seeds]]
                for seed in range(len(seeds), args.ensemble_seeds):
                    r = run_stage(data, "regularize", seed, root, args)
                    print(f"[{data} seed {seed} regularize] test acc {r['metrics']['test/acc']:.4f}", flush=True)
                    paths.append(r["best"])
                ensemble = seed_ensemble(data, paths, root, args)
            report(data, runs, ensemble, seeds, args)
    print(f"\ntotal {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
