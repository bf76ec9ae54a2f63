"""Data inspection (recipe 1) on the real built-in data sets: planted defects are found, exactly.

Each test plants k defects of every kind into copies of digits and MNIST-1D and checks the report
counts exactly the planted ones on top of what the clean data already holds. Measured clean
baselines (seed 0 split): digits and MNIST-1D have no exact duplicates, leaks, conflicts, NaN or
outliers (largest robust z: digits 3.2, MNIST-1D 4.2 against the threshold 6), and no near
duplicates at cosine distance 1e-3 (closest distinct digits pair: 0.006).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_tricks.data import DigitsDataModule, MNIST1DDataModule
from lightning_tricks.inspection import DataReport, gather_objects, inspect_data

K = 3
TESTS = Path(__file__).resolve().parent


def plant(dm: pl.LightningDataModule, k: int = K, seed: int = 0) -> dict[str, list]:
    """Plant k of each defect into dm's train/test sets (disjoint samples); return where they are."""
    dm.setup()
    x, y = (t.clone() for t in dm.datasets["train"].tensors)
    xt, yt = (t.clone() for t in dm.datasets["test"].tensors)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).tolist()
    take = iter(range(0, 100 * k, k))
    seg = {
        name: sorted(perm[(s := next(take)) : s + k]) for name in ("src", "dup", "csrc", "conf", "nan", "out", "leak")
    }
    x[seg["dup"]], y[seg["dup"]] = x[seg["src"]], y[seg["src"]]  # exact duplicates, same label
    x[seg["conf"]], y[seg["conf"]] = x[seg["csrc"]], (y[seg["csrc"]] + 1) % 10  # same input, another label
    x[seg["nan"], 0, 0] = float("nan")  # the first row (digits) / first value (MNIST-1D) of a sample
    x[seg["out"]] = x[seg["out"]] * 50  # a preprocessing bug: one sample not normalised
    test_idx = sorted(torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed + 1))[:k].tolist())
    xt[test_idx], yt[test_idx] = x[seg["leak"]], y[seg["leak"]]  # test samples copied from train
    dm.datasets["train"], dm.datasets["test"] = TensorDataset(x, y), TensorDataset(xt, yt)
    return {**seg, "test": test_idx}


class PlantedDigits(DigitsDataModule):
    """Digits with planted defects: what the CLI test points `data._target_` at."""

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            super().setup(stage)
            plant(self)


DATA = {"digits": lambda: DigitsDataModule(seed=0), "mnist1d": lambda: MNIST1DDataModule(num_samples=2000, seed=0)}


@pytest.fixture(scope="module", params=list(DATA))
def clean_and_planted(request: pytest.FixtureRequest) -> tuple[DataReport, DataReport, dict, pl.LightningDataModule]:
    clean_dm, planted_dm = DATA[request.param](), DATA[request.param]()
    clean_dm.setup()
    where = plant(planted_dm)
    return inspect_data(clean_dm), inspect_data(planted_dm), where, planted_dm


def test_clean_built_in_data_has_no_findings(clean_and_planted) -> None:
    clean, *_ = clean_and_planted
    assert not clean.has_errors and not clean.warnings, clean.to_markdown()
    assert not clean.conflicts and not any(clean.leaks.values()) and not any(clean.near_duplicate_leaks.values())
    for s in clean.splits.values():
        assert s.duplicate_groups == [] and s.outliers == [] and s.near_duplicates == [] and s.samples_with_nan == []
        assert s.target_kind == "multiclass" and sum(s.class_counts.values()) == s.num_samples


def test_every_planted_defect_is_found_exactly(clean_and_planted) -> None:
    _, report, where, dm = clean_and_planted
    train = report.splits["train"]
    expected_groups = [[a, b] for a, b in zip(where["src"], where["dup"], strict=True)]
    expected_groups += [[a, b] for a, b in zip(where["csrc"], where["conf"], strict=True)]
    assert train.duplicate_groups == sorted(sorted(g) for g in expected_groups)
    assert train.num_duplicates == 2 * K
    assert report.leaks["train/test"] == sorted(zip(where["leak"], where["test"], strict=True))
    assert report.leaks["train/val"] == [] and report.leaks["val/test"] == []
    pairs = sorted(tuple(sorted(p)) for p in zip(where["csrc"], where["conf"], strict=True))
    assert sorted((g[0][1], g[1][1]) for g in report.conflicts) == pairs
    assert all(g[0][2] != g[1][2] for g in report.conflicts)
    assert train.samples_with_nan == where["nan"]
    assert sum(train.nan_count) == int(torch.isnan(dm.datasets["train"].tensors[0]).sum()) > 0
    assert sorted(o["index"] for o in train.outliers) == where["out"]
    assert report.has_errors
    checks = {f.check for f in report.errors}
    assert checks == {"leakage", "bad_values"}


def test_statistics_equal_numpy_on_the_whole_split(clean_and_planted) -> None:
    clean, planted, _, planted_dm = clean_and_planted
    for report, dm in ((planted, planted_dm),):
        for name, dataset in dm.datasets.items():
            x = dataset.tensors[0].numpy().astype(np.float64)
            s = report.splits[name]
            values = x.transpose(1, 0, *range(2, x.ndim)).reshape(x.shape[1], -1)
            np.testing.assert_allclose(s.mean, np.nanmean(values, axis=1), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(s.std, np.nanstd(values, axis=1), rtol=1e-10)
            np.testing.assert_allclose(s.min, np.nanmin(values, axis=1))
            np.testing.assert_allclose(s.max, np.nanmax(values, axis=1))
    # the data modules normalise with train statistics: the clean train split is (0, 1)
    np.testing.assert_allclose(clean.splits["train"].mean, 0.0, atol=1e-6)
    np.testing.assert_allclose(clean.splits["train"].std, 1.0, rtol=1e-5)


def test_report_saves_markdown_json_and_figures(clean_and_planted, tmp_path: Path) -> None:
    _, report, _, _ = clean_and_planted
    report.save(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["has_errors"] is True and saved["leaks"]["train/test"] == [list(p) for p in report.leaks["train/test"]]
    assert saved["splits"]["train"]["num_duplicates"] == 2 * K
    markdown = (tmp_path / "report.md").read_text()
    assert "# Data inspection: errors found" in markdown and f"{K} test samples are exact copies" in markdown
    names = {p.stem for p in tmp_path.glob("*.png")}
    assert {"class_balance", "samples_train", "duplicates", "conflicts", "outliers"} <= names


def test_tabular_binary_and_regression_targets_from_a_dict_of_datasets() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g) * torch.tensor([1.0, 10.0, 0.0, 1.0, 1.0]) + torch.tensor([0, 0, 3.0, 0, 0])
    binary = (torch.arange(300) % 10 == 0).float()  # 1:9 imbalance, float 0/1 targets
    report = inspect_data({"train": TensorDataset(x, binary), "val": DataLoader(TensorDataset(x[:50], x[:50, :2]))})
    train, val = report.splits["train"], report.splits["val"]
    assert train.target_kind == "binary" and train.class_counts == {0: 270, 1: 30} and train.axis == "feature"
    assert train.constant_features == [2] and train.std[2] == 0.0
    assert val.target_kind == "regression" and np.allclose(val.target_mean, x[:50, :2].double().mean(0).numpy())
    assert len(report.leaks["train/val"]) == 50  # val is a copy of train's first 50 rows
    checks = {f.check for f in report.findings}
    assert {"leakage", "normalisation", "constant_features"} <= checks
    assert "imbalance" not in checks  # 9:1 is under the 10:1 threshold
    report.figures()  # tabular: feature histograms


def test_unlabelled_multilabel_and_empty_splits() -> None:
    x = torch.randn(20, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x[4] = x[9]
    x[1, 2, 0, 0] = float("inf")
    labels = (torch.arange(40).reshape(20, 2) % 3 == 0).float()
    report = inspect_data(
        {"train": TensorDataset(x), "val": TensorDataset(x, labels), "test": TensorDataset(x[:0], labels[:0])}
    )
    train, val, test = report.splits["train"], report.splits["val"], report.splits["test"]
    assert train.target_kind == "none" and train.duplicate_groups == [[4, 9]] and train.samples_with_inf == [1]
    assert train.inf_count == [0, 0, 1] and train.axis == "channel" and len(train.mean) == 3
    assert val.target_kind == "multilabel" and np.allclose(val.target_mean, labels.mean(0).numpy())
    assert test.num_samples == 0 and any(f.check == "empty" for f in report.findings)
    assert len(report.leaks["train/val"]) == 20 + 2  # every sample, and the duplicate pair both ways
    report.to_markdown()
    json.dumps(report.to_dict())


class _TwoValLoaders(pl.LightningDataModule):
    """A shuffled train loader, two val loaders, no test loader."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(TensorDataset(self.x[:5], self.y[:5])), DataLoader(TensorDataset(self.x[10:20] + 1))]


def test_a_datamodule_with_several_val_loaders_and_no_test_loader() -> None:
    report = inspect_data(_TwoValLoaders())
    assert list(report.splits) == ["train", "val/0", "val/1"]
    # indices are the data set's although the train loader shuffles
    assert report.leaks == {"train/val/0": [(i, i) for i in range(5)], "train/val/1": [], "val/0/val/1": []}
    assert [f.message for f in report.errors] == ["5 val/0 samples are exact copies of train samples."]
    assert "duplicates" in report.figures()


class _Stream(IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


def test_iterable_data_sets_and_dict_batches() -> None:
    x = torch.arange(40.0).reshape(10, 4)
    x[7] = x[2]
    loader = DataLoader(_Stream(x, torch.zeros(10, dtype=torch.long)), batch_size=3)
    report = inspect_data({"train": loader})
    assert report.splits["train"].duplicate_groups == [[2, 7]]
    dicts = DataLoader([{"image": x[i], "label": i % 2} for i in range(10)], batch_size=4)
    assert inspect_data({"train": dicts}).splits["train"].duplicate_groups == [[2, 7]]


def test_bad_arguments_raise_clear_errors() -> None:
    data = {"train": TensorDataset(torch.zeros(4, 2), torch.zeros(4))}
    with pytest.raises(ValueError, match=r"`outlier_threshold` must be a number > 0\.0, got -1"):
        inspect_data(data, outlier_threshold=-1)
    with pytest.raises(ValueError, match="`all_gather` is required"):
        inspect_data(data, rank=0, world_size=2)
    with pytest.raises(ValueError, match="`source` must be a LightningDataModule"):
        inspect_data([1, 2])  # type: ignore[arg-type]


# ---- DDP: every rank scans its shard; the merged report is the one-process report -------------------


class _Inspect(Callback):
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report = inspect_data(
            trainer.datamodule,
            batch_size=64,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            all_gather=gather_objects,
        )


def ddp_inspection(devices: int) -> dict:
    from lightning_tricks.models import MLP

    dm = PlantedDigits(seed=0)
    callback = _Inspect()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=0,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(MLP(input_shape=(1, 8, 8), num_outputs=10), datamodule=dm)
    return callback.report.to_dict()


def _assert_same(a: object, b: object) -> None:
    """Equal, floats up to float64 rounding (moments are merged in another order)."""
    if isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _assert_same(u, v)
    else:
        assert a == b


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_ddp_report_equals_the_one_process_report() -> None:
    from lightning_tricks.testing import run_ddp

    rank0, rank1 = run_ddp(ddp_inspection, devices=2, timeout=300)
    _assert_same(rank0, rank1)
    single = inspect_data(PlantedDigits(seed=0))
    _assert_same(single.to_dict(), rank0)
    assert rank0["has_errors"] and len(rank0["leaks"]["train/test"]) == K


# ---- the command --------------------------------------------------------------------------------------


def _inspect_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "lightning_tricks.commands.inspect", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_inspect_config_options_are_inspect_data_arguments() -> None:
    import inspect

    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(TESTS.parent / "conf" / "inspect.yaml"))
    options = set(node) - {"defaults", "hydra", "seed", "task_name", "strict", "figures"}
    arguments = set(inspect.signature(inspect_data).parameters)
    assert options <= arguments and arguments - options == {"source", "split_batch", "rank", "world_size", "all_gather"}
    defaults = {k: p.default for k, p in inspect.signature(inspect_data).parameters.items()}
    assert all(list(defaults[k]) == node[k] if k == "splits" else defaults[k] == node[k] for k in options)


@pytest.mark.slow
def test_cli_strict_exits_1_on_planted_leakage_and_0_on_clean_data(tmp_path: Path) -> None:
    clean = _inspect_cli("strict=true", "figures=false", f"hydra.run.dir={tmp_path / 'clean'}", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "Data inspection" in clean.stdout and (tmp_path / "clean" / "report.json").exists()
    leaky = _inspect_cli(
        "strict=true",
        "data._target_=test_inspection.PlantedDigits",
        f"hydra.run.dir={tmp_path / 'leaky'}",
        cwd=tmp_path,
    )
    assert leaky.returncode == 1, leaky.stderr[-3000:]
    saved = json.loads((tmp_path / "leaky" / "report.json").read_text())
    assert saved["has_errors"] and len(saved["leaks"]["train/test"]) == K
    assert (tmp_path / "leaky" / "duplicates.png").exists()


def _planted_embeddings(n: int, planted: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    from lightning_tricks.functional.data_scan import embed

    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 256, generator=g)
    order = torch.randperm(n, generator=g)
    src, dst = order[:planted], order[planted : 2 * planted]
    x[dst] = x[src] + torch.logspace(-3.5, -1.5, planted).unsqueeze(1) * torch.randn(planted, 256, generator=g)
    emb = embed(x)
    similarity = torch.from_numpy(emb) @ torch.from_numpy(emb).T  # the exact answer, all pairs
    rows, cols = (similarity > 1 - 1e-3).nonzero(as_tuple=True)
    return emb, {(i, j) for i, j in zip(rows.tolist(), cols.tolist(), strict=True) if i < j}


def test_near_duplicate_search_above_the_exact_size_finds_the_exact_pairs() -> None:
    # Above EXACT_SEARCH_MAX rows the search is faiss's inverted-file index (approximate): on planted
    # pairs spread over both sides of the threshold it finds exactly what all-pairs search finds.
    from lightning_tricks.functional.data_scan import EXACT_SEARCH_MAX, near_duplicate_pairs

    n = EXACT_SEARCH_MAX + 2000
    emb, truth = _planted_embeddings(n, 200)
    found = near_duplicate_pairs(emb, np.arange(n), emb, np.arange(n), 1e-3, same=True)
    assert 50 < len(truth) < 200  # some planted pairs fall outside the threshold, by construction
    assert {(i, j) for i, j, _ in found} == truth
    # Across splits (leakage): the second half against the first, indices kept.
    half = n // 2
    cross = near_duplicate_pairs(emb[half:], np.arange(half, n), emb[:half], np.arange(half), 1e-3, same=False)
    assert {(min(i, j), max(i, j)) for i, j, _ in cross} == {(i, j) for i, j in truth if i < half <= j}
