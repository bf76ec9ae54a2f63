"""Recipe 6 — checkpoint ensembles: closed forms, top-k of a run, bad checkpoints, weights_only, CLI, DDP."""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from lightning_tricks import CheckpointEnsemble, CheckpointError
from lightning_tricks.data import DigitsDataModule
from lightning_tricks.ensembling import evaluate_checkpoints, expand_checkpoints, load_state_dict
from lightning_tricks.functional.ensemble import (
    batch_sums,
    ensemble_predictions,
    member_predictions,
    metrics_from_sums,
    probabilities,
)
from lightning_tricks.models import MLP
from lightning_tricks.testing import run_ddp

# 279 test samples: odd, so a padded DistributedSampler on 2 ranks would count one twice.
TEST_FRACTION = 0.155


def datamodule() -> DigitsDataModule:
    return DigitsDataModule(seed=0, test_fraction=TEST_FRACTION, batch_size=64)


def trainer(tmp_path: Path, callbacks: list, max_epochs: int = 4, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=kwargs.pop("logger", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def train_checkpoints(tmp_path: Path, seeds=(0, 1), hidden=(32,), epochs: int = 3) -> list[Path]:
    """The last checkpoint of one short run per seed (same data split)."""
    paths = []
    for seed in seeds:
        pl.seed_everything(seed, verbose=False)
        dm = datamodule()
        model = MLP(input_shape=dm.input_shape, num_outputs=10, hidden_sizes=list(hidden))
        tr = trainer(tmp_path, [], max_epochs=epochs, enable_checkpointing=False)
        tr.fit(model, datamodule=dm)
        path = tmp_path / f"seed{seed}-h{'x'.join(map(str, hidden))}.ckpt"
        tr.save_checkpoint(path)
        paths.append(path)
    return paths


def template(dm: DigitsDataModule, hidden=(32,)) -> MLP:
    return MLP(input_shape=dm.input_shape, num_outputs=10, hidden_sizes=list(hidden))


def manual_test_outputs(paths: list[Path], dm: DigitsDataModule) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each checkpoint's logits on the test set, loaded the plain Lightning way, and the targets."""
    dm.setup("test")
    x, y = dm.datasets["test"].tensors
    logits = []
    for path in paths:
        model = MLP.load_from_checkpoint(path, weights_only=True).eval()
        with torch.no_grad():
            logits.append(model(x))
    return logits, y


# ---------------------------------------------------------------- closed forms (no Trainer)


def test_ensemble_is_the_mean_of_the_members_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 4, generator=g) * 3
    y = torch.randint(0, 4, (50,), generator=g)
    preds = torch.stack([member_predictions(z, "multiclass") for z in logits])
    mean_p = logits.softmax(-1).mean(0)
    assert torch.allclose(probabilities(ensemble_predictions(preds, "multiclass"), "multiclass"), mean_p, atol=1e-6)
    loss, acc, count = metrics_from_sums(batch_sums(preds, y, "multiclass"))
    assert count == 50
    for m in range(3):  # members: the model's own cross entropy and accuracy
        assert float(loss[m]) == pytest.approx(float(F.cross_entropy(logits[m], y)), abs=1e-6)
        assert float(acc[m]) == pytest.approx(float((logits[m].argmax(-1) == y).double().mean()))
    assert float(loss[3]) == pytest.approx(float(-mean_p[torch.arange(50), y].log().mean()), abs=1e-6)
    assert float(acc[3]) == pytest.approx(float((mean_p.argmax(-1) == y).double().mean()))
    # One member: the ensemble is that member.
    single = metrics_from_sums(batch_sums(preds[:1], y, "multiclass"))
    assert torch.allclose(single[0][0], single[0][1]) and torch.equal(single[1][0], single[1][1])


def test_binary_and_regression_closed_forms() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 40, 1, generator=g) * 2
    y = torch.randint(0, 2, (40,), generator=g).float()
    preds = torch.stack([member_predictions(m, "binary") for m in z])
    p = torch.sigmoid(z.squeeze(-1)).mean(0)
    assert torch.allclose(probabilities(ensemble_predictions(preds, "binary"), "binary"), p, atol=1e-6)
    loss, acc, _ = metrics_from_sums(batch_sums(preds, y, "binary"))
    assert float(loss[0]) == pytest.approx(float(F.binary_cross_entropy_with_logits(z[0].squeeze(-1), y)), abs=1e-6)
    assert float(loss[2]) == pytest.approx(float(F.binary_cross_entropy(p, y)), abs=1e-6)
    assert float(acc[2]) == pytest.approx(float(((p > 0.5).float() == y).double().mean()))
    outputs = torch.randn(3, 30, 1, generator=g)
    target = torch.randn(30, 1, generator=g)
    loss, mae, _ = metrics_from_sums(batch_sums(torch.stack(list(outputs)), target, "regression"))
    assert float(loss[3]) == pytest.approx(float(F.mse_loss(outputs.mean(0), target)), abs=1e-6)
    assert float(mae[3]) == pytest.approx(float((outputs.mean(0) - target).abs().mean()), abs=1e-6)


def test_checkpoint_list_errors_come_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`checkpoints` is empty"):
        expand_checkpoints([])
    with pytest.raises(ValueError, match=r"the glob '.*nowhere/\*\.ckpt' matches no file"):
        expand_checkpoints(str(tmp_path / "nowhere" / "*.ckpt"))
    for name in ("b.ckpt", "a.ckpt"):
        (tmp_path / name).write_bytes(b"")
    assert expand_checkpoints([str(tmp_path / "*.ckpt"), str(tmp_path / "a.ckpt")]) == [
        str(tmp_path / "a.ckpt"),
        str(tmp_path / "b.ckpt"),
    ]
    with pytest.raises(ValueError, match="not both"):
        CheckpointEnsemble(checkpoints=["a.ckpt"], top_k=2)
    with pytest.raises(ValueError, match="`on_failure` must be one of"):
        CheckpointEnsemble(on_failure="explode")
    with pytest.raises(ValueError, match="`top_k` must be None or an integer >= 1, got 0"):
        CheckpointEnsemble(top_k=0)


# ---------------------------------------------------------------- real checkpoints


def test_members_and_ensemble_equal_a_manual_pass_on_digits(tmp_path: Path) -> None:
    paths = train_checkpoints(tmp_path, seeds=(0, 1, 2))
    dm = datamodule()
    logits, y = manual_test_outputs(paths, dm)
    report = evaluate_checkpoints(paths, template(dm), dm.test_dataloader(), "multiclass")
    assert [m.path for m in report.members] == [str(p) for p in paths] and report.count == len(y)
    for member, z in zip(report.members, logits, strict=True):
        assert member.loss == pytest.approx(float(F.cross_entropy(z, y)), abs=1e-5)
        assert member.metric == pytest.approx(float((z.argmax(-1) == y).double().mean()))
    mean_p = torch.stack([z.softmax(-1) for z in logits]).mean(0)
    assert report.ensemble_metric == pytest.approx(float((mean_p.argmax(-1) == y).double().mean()))
    assert report.ensemble_loss == pytest.approx(float(-mean_p[torch.arange(len(y)), y].log().mean()), abs=1e-5)
    single = evaluate_checkpoints(paths[:1], template(dm), dm.test_dataloader(), "multiclass")
    assert single.ensemble_metric == single.members[0].metric == report.members[0].metric
    assert single.ensemble_loss == pytest.approx(single.members[0].loss, abs=1e-9)


def test_top_k_of_one_run_through_the_callback(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = datamodule()
    model = template(dm)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=3, monitor="val/loss")
    ensemble = CheckpointEnsemble()
    tr = trainer(tmp_path, [checkpoint, ensemble], max_epochs=5, logger=CSVLogger(tmp_path, name="csv", version=""))
    tr.fit(model, datamodule=dm)
    top3 = sorted(checkpoint.best_k_models, key=lambda p: float(checkpoint.best_k_models[p]))
    assert len(top3) == 3 and sorted(top3) == sorted(map(str, (tmp_path / "ckpt").glob("*.ckpt")))
    # test(ckpt_path="best") restores the ModelCheckpoint's state of the best (an earlier or the last)
    # epoch; the members are still the run's final top 3, best first.
    (result,) = tr.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    report = ensemble.report
    assert [m.path for m in report.members] == top3 and report.failures == []
    assert result["test/ensemble_acc"] == pytest.approx(report.ensemble_metric, abs=1e-6)
    assert result["test/ensemble_members"] == 3
    # The best member's numbers are the model's own test metrics (the best checkpoint, evaluated by Lightning).
    assert report.best_member.path == top3[0] == checkpoint.best_model_path
    assert result["test/ensemble_best_member_loss"] == pytest.approx(result["test/loss"], abs=1e-5)
    assert result["test/ensemble_best_member_acc"] == pytest.approx(result["test/acc"], abs=1e-6)
    table = next((tmp_path / "csv" / "media").glob("test_ensemble_members_step*.csv")).read_text()
    assert all(p in table for p in top3) and "ensemble of 3" in table
    # The model under test is not changed by the ensemble's evaluation.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    tr.test(model, datamodule=dm, verbose=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training == training
    assert all(p.grad is None for p in model.parameters())


class Payload:
    """An object whose unpickling runs code (touches a file): what weights_only loading must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def bad_checkpoints(tmp_path: Path, good: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(random.Random(0).randbytes(2048))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (other,) = train_checkpoints(tmp_path, seeds=(5,), hidden=(16, 8), epochs=1)
    return {
        "garbage": garbage,
        "truncated": truncated,
        "other_arch": other,
        "missing": tmp_path / "missing.ckpt",
    }


def test_bad_checkpoints_are_named_and_the_others_still_evaluated(tmp_path: Path) -> None:
    good = train_checkpoints(tmp_path, seeds=(0, 1))
    bad = bad_checkpoints(tmp_path, good[0])
    paths = [good[0], bad["garbage"], bad["truncated"], bad["other_arch"], bad["missing"], good[1]]
    dm = datamodule()
    expected = evaluate_checkpoints(good, template(dm), dm.test_dataloader(), "multiclass")
    callback = CheckpointEnsemble(checkpoints=[str(p) for p in paths])
    model = template(dm)
    with pytest.warns(UserWarning, match="garbage.ckpt"):
        trainer(tmp_path, [callback]).test(model, datamodule=dm, verbose=False)
    report = callback.report
    assert [m.path for m in report.members] == [str(p) for p in good]
    assert report.ensemble_metric == expected.ensemble_metric
    assert report.ensemble_loss == pytest.approx(expected.ensemble_loss, abs=1e-9)
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert set(reasons) == {p.name for p in bad.values()}
    assert "cannot be read, corrupted or" in reasons["garbage.ckpt"]
    assert "cannot be read, corrupted or truncated?" in reasons["truncated.ckpt"]
    assert "does not fit the model MLP" in reasons[bad["other_arch"].name]
    assert "size mismatch for net.1.weight" in reasons[bad["other_arch"].name]
    assert reasons["missing.ckpt"] == "no such file"
    # on_failure="raise": the first bad file, named, is the error.
    strict = CheckpointEnsemble(checkpoints=[str(good[0]), str(bad["truncated"])], on_failure="raise")
    with pytest.raises(CheckpointError, match=r"checkpoint .*truncated\.ckpt: cannot be read"):
        trainer(tmp_path, [strict]).test(template(dm), datamodule=dm, verbose=False)
    with pytest.raises(CheckpointError, match="no checkpoint could be loaded"):
        evaluate_checkpoints([bad["garbage"]], template(dm), dm.test_dataloader(), "multiclass")


def test_pickled_objects_are_refused_by_weights_only_loading(tmp_path: Path) -> None:
    (good,) = train_checkpoints(tmp_path, seeds=(0,), epochs=1)
    marker = tmp_path / "code_ran"
    unsafe = tmp_path / "unsafe.ckpt"
    checkpoint = torch.load(good, weights_only=True)
    torch.save({**checkpoint, "extra": Payload(marker)}, unsafe)
    with pytest.raises(CheckpointError, match=r"unsafe\.ckpt: refused by torch\.load\(weights_only=True\)") as err:
        load_state_dict(unsafe)
    assert "(unsupported GLOBAL getattr)" in str(err.value) and not marker.exists()  # the payload did not run
    torch.load(unsafe, weights_only=False)  # the plant is real: unpickling it unsafely runs the payload
    assert marker.exists()


# ---------------------------------------------------------------- the command


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "lightning_tricks", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.slow  # a subprocess command run: seconds each, in `make test`
def test_command_rejects_a_glob_that_matches_nothing(tmp_path: Path) -> None:
    proc = cli("ensemble", "checkpoints=nowhere/*.ckpt", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and "the glob 'nowhere/*.ckpt' matches no file" in proc.stderr


@pytest.mark.slow
def test_command_on_a_seed_multirun(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    ok(
        cli(
            "train", "-m", "seed=1,2", "data.seed=42", "recipe=none", "logger=csv", "trainer.max_epochs=3",
            "+callbacks@callbacks.model_checkpoint=model_checkpoint", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
        )
    )  # fmt: skip
    run_dir = tmp_path / "ensemble"
    glob = f"{sweep}/*/checkpoints/epoch*.ckpt"
    proc = ok(cli("ensemble", f"checkpoints={glob}", f"hydra.run.dir={run_dir}", cwd=tmp_path))
    report = json.loads((run_dir / "ensemble.json").read_text())
    assert report["config_from"] == str(sweep / "0" / ".hydra" / "config.yaml") and report["split"] == "test"
    assert len(report["members"]) == 2 and report["failures"] == []
    # Same split as training (from the runs' saved config): each member's numbers are its run's test metrics.
    for member in report["members"]:
        run = Path(member["path"]).parents[1]
        rows = (run / "csv" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        test = next(
            dict(zip(header, r.split(","), strict=True)) for r in rows[1:] if r.split(",")[header.index("test/acc")]
        )
        assert member["metric"] == pytest.approx(float(test["test/acc"]), abs=1e-6)
        assert member["loss"] == pytest.approx(float(test["test/loss"]), abs=1e-5)
    assert "ensemble of 2" in proc.stdout and "ok, best member" in proc.stdout
    assert (run_dir / "ensemble.csv").read_text().count("\n") == 3 + 1
    # A garbage checkpoint among them: reported by name, the others evaluated, exit code 1.
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    bad_dir = tmp_path / "bad"
    proc = cli("ensemble", f"checkpoints=[{glob},{garbage}]", f"hydra.run.dir={bad_dir}", cwd=tmp_path)
    assert proc.returncode == 1 and f"failed member: {garbage}: cannot be read" in proc.stdout
    bad = json.loads((bad_dir / "ensemble.json").read_text())
    assert bad["members"] == report["members"] and bad["failures"][0]["path"] == str(garbage)
    # A member trained on another split is refused before any work.
    other = sweep / "1" / ".hydra" / "config.yaml"
    config = OmegaConf.load(other)
    config.data.seed = 7
    OmegaConf.save(config, other)
    proc = cli("ensemble", f"checkpoints={glob}", f"hydra.run.dir={tmp_path / 'mixed'}", cwd=tmp_path)
    assert proc.returncode == 2 and "The members were trained on different data" in proc.stderr
    assert "data.seed ([42] vs [7])" in proc.stderr and not (tmp_path / "mixed" / "ensemble.json").exists()


# ---------------------------------------------------------------- DDP


def ensemble_report(paths: list[str], devices: int) -> dict:
    dm = datamodule()
    callback = CheckpointEnsemble(checkpoints=paths)
    tr = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (result,) = tr.test(template(dm), datamodule=dm, verbose=False)
    return {"report": callback.report.to_dict(), "logged": result}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_give_the_single_process_numbers(tmp_path: Path) -> None:
    paths = [str(p) for p in train_checkpoints(tmp_path, seeds=(0, 1, 2))]
    single = ensemble_report(paths, devices=1)
    rank0, rank1 = run_ddp(ensemble_report, paths, devices=2, timeout=240)
    assert single["report"]["count"] == 279  # odd: padding would have counted a sample twice
    for rank in (rank0, rank1):
        assert rank["report"]["count"] == 279
        for a, b in zip(rank["report"]["members"], single["report"]["members"], strict=True):
            assert a["path"] == b["path"] and a["metric"] == b["metric"]
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-9)
        assert rank["report"]["ensemble_metric"] == single["report"]["ensemble_metric"]
        assert rank["report"]["ensemble_loss"] == pytest.approx(single["report"]["ensemble_loss"], abs=1e-9)
        assert rank["logged"]["test/ensemble_acc"] == pytest.approx(single["logged"]["test/ensemble_acc"], abs=1e-7)
