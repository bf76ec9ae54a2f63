"""The study behind `lightning-tricks tune` (:mod:`lightning_tricks.commands.tune`): hyper-parameter
search (recipe 5) on Optuna, resumable and parallel. The objective, samplers, storage and workers
live here; the report in :mod:`lightning_tricks.tuning.report`.

Not a Hydra sweeper plugin: this command composes the ``train`` config once, then runs each trial as
``train`` on a copy with the trial's values set, so the trial object stays in reach (pruning from
validation metrics), the current Optuna is used, and the values print as the ``train`` command line
that reproduces the trial. The search space is a config group (``conf/hparams_search/*.yaml``, see
:mod:`lightning_tricks.functional.search_space`).

A study lives in a database (SQLite in the run directory by default): rerunning the command resumes
it, and workers running the same command against one database (PostgreSQL across machines) share
it. ``tune.n_trials`` counts the study's trials over all workers and restarts: complete, pruned,
failed (an exception, a NaN metric) and running ones. A trial whose worker died is failed by
Optuna's heartbeat after ``tune.grace_period`` seconds and run again with the same values; it is
not counted, so nothing is lost and nothing completed is repeated.

Trials run in this process, or as a ``lightning-tricks train`` subprocess when the trainer starts
several processes (DDP re-executes the command line, which must be ``train``): one Optuna trial per
training run, whatever the number of ranks.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import TrialState

from lightning_tricks.callbacks.optuna_pruning import STORAGE_ENV, live_trial
from lightning_tricks.functional.search_space import (
    ParamSpec,
    SearchSpaceError,
    grid_space,
    parse_fixed,
    parse_search_space,
    suggest,
    value_from_unit,
)
from lightning_tricks.utilities.arguments import UsageError

log = logging.getLogger(__name__)

SAMPLERS = ("random", "qmc", "tpe", "grid")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
TRIAL_PROCESSES = ("auto", "inprocess", "subprocess")
RESULT_ENV = "LIGHTNING_TRICKS_RESULT_FILE"
_TUNE_ONLY = ("tune", "hparams_search", "hydra", "paths")  # overrides that are not train's
_FINGERPRINT_SKIP = ("tune", "hparams_search", "paths", "logger", "task_name")
_COSMETIC_TRAINER_KEYS = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")
_MISSING = object()


class TrialFailed(RuntimeError):
    """A trial that ran but cannot be scored (a NaN metric, a missing metric, a crashed subprocess)."""


# --------------------------------------------------------------------------------------------- config
def split_config(cfg: DictConfig) -> tuple[DictConfig, list[ParamSpec], list[ParamSpec]]:
    """The ``train`` part of a ``tune`` config, the searched keys and the fixed ones, all checked."""
    check_tune_settings(cfg.tune)
    search = cfg.get("hparams_search") or {}
    specs = parse_search_space(search.get("params"))
    fixed = parse_fixed(search.get("fixed"))
    train_cfg = copy.deepcopy(cfg)
    with _open(train_cfg):
        for key in ("tune", "hparams_search"):
            train_cfg.pop(key, None)
        train_cfg.task_name = "train"
    for spec in [*fixed, *specs]:
        _check_key(train_cfg, spec)
    return train_cfg, specs, fixed


class _open:
    """Temporarily lift OmegaConf's struct flag (Hydra composes configs in struct mode)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg, self.struct = cfg, OmegaConf.is_struct(cfg)

    def __enter__(self) -> None:
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc: object) -> None:
        OmegaConf.set_struct(self.cfg, self.struct)


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, DictConfig):
        return [k for key, child in node.items_ex(resolve=False) for k in _leaf_keys(child, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def _check_key(train_cfg: DictConfig, spec: ParamSpec) -> None:
    value = OmegaConf.select(train_cfg, spec.key, default=_MISSING, throw_on_resolution_failure=False)
    if spec.add:
        if value is not _MISSING:
            raise SearchSpaceError(f"search space `+{spec.key}`: the key exists in the train config; drop the '+'.")
        return
    if value is _MISSING:
        close = difflib.get_close_matches(spec.key, _leaf_keys(train_cfg), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise SearchSpaceError(
            f"search space `{spec.key}`: no such key in the train config.{hint} "
            f"Write `+{spec.key}` to add a key the config lacks."
        )
    if isinstance(value, DictConfig) and spec.type != "categorical":
        raise SearchSpaceError(f"search space `{spec.key}`: is a config node, not a value; search one of its keys.")


def check_tune_settings(t: DictConfig) -> None:
    """Fail on bad ``tune.*`` values before a study is opened or a trial runs."""
    n = t.get("n_trials")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"`tune.n_trials` must be a positive integer, got {n!r}.")
    for name, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("trial_process", TRIAL_PROCESSES)):
        if t.get(name) not in allowed:
            raise UsageError(f"`tune.{name}` must be one of {list(allowed)}, got {t.get(name)!r}.")
    if t.get("direction") not in ("minimize", "maximize"):
        raise UsageError(f"`tune.direction` must be 'minimize' or 'maximize', got {t.get('direction')!r}.")
    for name in ("n_startup_trials", "n_warmup_steps"):
        if name == "n_warmup_steps" and t.get(name) is None:
            continue  # half the trial's epochs (warmup_steps)
        if isinstance(t.get(name), bool) or not isinstance(t.get(name), int) or t.get(name) < 0:
            raise UsageError(
                f"`tune.{name}` must be an integer >= 0"
                + (" or null (half the epochs)" if name == "n_warmup_steps" else "")
                + f", got {t.get(name)!r}."
            )
    for name in ("grid_points", "heartbeat_interval", "grace_period"):
        if isinstance(t.get(name), bool) or not isinstance(t.get(name), int) or t.get(name) < 1:
            raise UsageError(f"`tune.{name}` must be a positive integer, got {t.get(name)!r}.")
    if t.grace_period <= t.heartbeat_interval:
        raise UsageError(
            f"`tune.grace_period` ({t.grace_period}) must exceed `tune.heartbeat_interval` ({t.heartbeat_interval})."
        )
    if t.get("timeout") is not None and not (isinstance(t.timeout, (int, float)) and t.timeout > 0):
        raise UsageError(f"`tune.timeout` must be a positive number of seconds or null, got {t.timeout!r}.")
    if not t.get("study_name") or not isinstance(t.study_name, str):
        raise UsageError(f"`tune.study_name` must be a non-empty string, got {t.get('study_name')!r}.")
    if not isinstance(t.get("metric"), str) or not t.metric:
        raise UsageError(f"`tune.metric` must be the name of a final metric like 'val/loss', got {t.get('metric')!r}.")


def multi_process(trainer_cfg: Any) -> bool:
    """Whether the trainer config starts several processes (DDP & co.), so a trial must be a subprocess."""
    if int(trainer_cfg.get("num_nodes", 1) or 1) > 1:
        return True
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices) > 1
    if isinstance(devices, str):
        if "," in devices.strip(","):
            return True
        if devices.strip() in ("auto", "-1"):
            return str(trainer_cfg.get("accelerator", "auto")) not in ("cpu",)
        devices = int(devices.strip(","))
    return int(devices) > 1 or int(devices) == -1


def train_overrides(overrides: Sequence[str]) -> list[str]:
    """The command-line overrides that are ``train``'s: not ``tune.*``, ``hparams_search``, ``hydra.*``, ``paths.*``."""
    kept = []
    for override in overrides:
        key = override.lstrip("~+").split("=", 1)[0].split("@", 1)[0]
        if not any(key == p or key.startswith(f"{p}.") or key.startswith(f"{p}/") for p in _TUNE_ONLY):
            kept.append(override)
    return kept


def fingerprint(train_cfg: DictConfig, specs: Sequence[ParamSpec], fixed: Sequence[ParamSpec], metric: str) -> dict:
    """What must match for two runs to share a study: the train config (without paths and loggers),
    the search space and the metric."""
    body = OmegaConf.to_container(train_cfg, resolve=False)
    for key in _FINGERPRINT_SKIP:
        body.pop(key, None)
    for key in _COSMETIC_TRAINER_KEYS:  # how a run looks, not what it computes
        (body.get("trainer") or {}).pop(key, None)
    (body.get("callbacks") or {}).pop("rich_progress_bar", None)
    space = {s.key: [s.type, s.low, s.high, s.log, s.step, list(s.encoded), s.add] for s in [*specs, *fixed]}
    return json.loads(json.dumps({"config": body, "space": space, "metric": metric}, default=str))


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


# ---------------------------------------------------------------------------------------------- study
class PerTrialRandomSampler(optuna.samplers.RandomSampler):
    """Random search where trial *n*'s values depend only on ``(seed, n, key)``.

    Optuna's ``RandomSampler(seed)`` draws from one generator per process: two workers with the same
    seed would try the same values, and a resumed study would repeat the first trials' values. Here a
    trial's values are the same whichever worker runs it and whenever, and differ between trials.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self.base_seed = seed

    def sample_independent(self, study: optuna.Study, trial: Any, param_name: str, distribution: Any) -> Any:
        if self.base_seed is None:
            return super().sample_independent(study, trial, param_name, distribution)
        key = [int(self.base_seed) % 2**32, trial.number, zlib.crc32(param_name.encode())]
        u = float(np.random.default_rng(key).random())
        return value_from_unit(_spec_of(param_name, distribution), u)


def _spec_of(name: str, d: Any) -> ParamSpec:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return ParamSpec(key=name, type="categorical", choices=tuple(d.choices), encoded={c: c for c in d.choices})
    kind = "int" if isinstance(d, optuna.distributions.IntDistribution) else "float"
    step = None if (kind == "int" and d.step == 1) else d.step
    return ParamSpec(key=name, type=kind, low=d.low, high=d.high, log=d.log, step=step)


def make_sampler(name: str, seed: int | None, specs: Sequence[ParamSpec], grid_points: int, n_startup: int) -> Any:
    """The sampler called ``name`` (random | qmc | tpe | grid), seeded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return PerTrialRandomSampler(seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False
            )
        if name == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=max(n_startup, 1), multivariate=True, constant_liar=True
            )
        return optuna.samplers.GridSampler(grid_space(specs, grid_points), seed=seed)


def warmup_steps(n_warmup: int | None, max_epochs: int | None) -> int:
    """``tune.n_warmup_steps``, where null means half the trial's validations (``max_epochs // 2``; 1 without a length).

    >>> warmup_steps(None, 20), warmup_steps(None, 5), warmup_steps(None, None), warmup_steps(3, 20)
    (10, 2, 1, 3)
    """
    if n_warmup is not None:
        return n_warmup
    return max(1, max_epochs // 2) if max_epochs else 1


def pruner_config(name: str, n_startup: int, n_warmup: int, max_resource: int | None = None) -> dict[str, Any]:
    """The pruner as a Hydra node: a ``train`` subprocess rebuilds the same pruner from its config.

    Steps are validations (one per epoch by default). ``n_warmup``: validations before a trial can be
    pruned (the median pruner's ``n_warmup_steps``; the halving pruners' first rung, ``min_resource``,
    at least 1). ``n_startup``: trials that finish before the median pruner judges. ``max_resource``:
    the validations of a full trial (``trainer.max_epochs``), Hyperband's largest budget.
    """
    if name == "median":
        return {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": n_startup, "n_warmup_steps": n_warmup}
    if name == "successive_halving":
        return {
            "_target_": "optuna.pruners.SuccessiveHalvingPruner",
            "min_resource": max(1, n_warmup),
            "reduction_factor": 3,
            "min_early_stopping_rate": 0,
        }
    if name == "hyperband":
        return {
            "_target_": "optuna.pruners.HyperbandPruner",
            "min_resource": max(1, n_warmup),
            "max_resource": "auto" if max_resource is None else max(max_resource, max(1, n_warmup)),
            "reduction_factor": 3,
        }
    return {"_target_": "optuna.pruners.NopPruner"}


def make_pruner(name: str, n_startup: int, n_warmup: int, max_resource: int | None = None) -> optuna.pruners.BasePruner:
    from hydra.utils import instantiate

    return instantiate(pruner_config(name, n_startup, n_warmup, max_resource))


def make_storage(url: str | None, heartbeat_interval: int = 10, grace_period: int = 30) -> Any:
    """An RDB storage with a heartbeat (dead workers' trials are failed and retried), or None (memory)."""
    if url is None:
        return None
    url = str(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers on one file wait, not fail
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
        except Exception as error:  # two workers creating the tables of a new database at the same moment
            if attempt == 4 or not any(
                m in str(error).lower() for m in ("already exists", "locked", "unique constraint")
            ):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_study(storage: Any, study_name: str, direction: str, print_: dict | None = None) -> tuple[optuna.Study, bool]:
    """Create the study, or load it if it exists; ``(study, created)``. A loaded study must match."""
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction=direction)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage)
        created = False
        if study.direction.name.lower() != direction:
            raise UsageError(
                f"study {study_name!r} was created to {study.direction.name.lower()}, not to {direction}; "
                "pass another `tune.study_name` to start a new study."
            ) from None
    if print_ is not None:
        stored = study.user_attrs.get("lightning_tricks")
        if stored is None:
            study.set_user_attr("lightning_tricks", print_)
        elif stored != print_:
            old, new = _flat(stored), _flat(print_)
            keys = sorted(k for k in old.keys() | new.keys() if old.get(k, _MISSING) != new.get(k, _MISSING))
            diff = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys]
            raise UsageError(
                f"study {study_name!r} was started with another config or search space ({'; '.join(diff[:8])}); "
                "rerun with the study's settings, or pass a new `tune.study_name`."
            )
    return study, created


def counted(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials that count towards ``n_trials``: complete, pruned, running, and failed *by the trial*.

    A trial failed by an interruption (its worker killed or stopped) carries no ``failure`` and is run
    again (Optuna's heartbeat callback re-enqueues it), so it does not count.
    """
    ok = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(t.state in ok or (t.state == TrialState.FAIL and "failure" in t.user_attrs) for t in trials)


# ------------------------------------------------------------------------------------------ objective
class TrialObjective:
    """One trial = one ``train`` run of the base config with the trial's values; returns ``metric``.

    Reusable on its own: ``study.optimize(TrialObjective(train_cfg, specs, run_dir, train=train), n_trials=...)``.

    ``train`` runs an in-process trial: ``lightning_tricks.commands.train.train`` (what the ``tune``
    command passes), or any function of a train config that returns an object with ``metrics``.
    """

    def __init__(
        self,
        train_cfg: DictConfig,
        specs: Sequence[ParamSpec],
        run_dir: str | Path,
        metric: str = "val/loss",
        fixed: Sequence[ParamSpec] = (),
        pruning_monitor: str | None = None,
        pruner: dict[str, Any] | None = None,
        trial_process: str = "auto",
        base_overrides: Sequence[str] = (),
        storage_url: str | None = None,
        train: Callable[[DictConfig], Any] | None = None,
    ) -> None:
        if trial_process not in TRIAL_PROCESSES:
            raise UsageError(f"`trial_process` must be one of {list(TRIAL_PROCESSES)}, got {trial_process!r}.")
        several = multi_process(train_cfg.trainer)
        if trial_process == "inprocess" and several:
            raise UsageError(
                "`tune.trial_process=inprocess` cannot run a multi-process trainer (DDP re-executes the "
                "command line); use `auto` or `subprocess`."
            )
        if trial_process == "subprocess" and storage_url is None and pruning_monitor is not None:
            raise UsageError("subprocess trials with pruning need a database `tune.storage` the subprocess can reach.")
        self.train_cfg = train_cfg
        self.specs, self.fixed = list(specs), list(fixed)
        self.run_dir = Path(run_dir)
        self.metric = metric
        self.pruning_monitor = pruning_monitor
        self.pruner = pruner or pruner_config("median", 5, 0)
        self.subprocess = trial_process == "subprocess" or (trial_process == "auto" and several)
        self.base_overrides = list(base_overrides)
        self.storage_url = storage_url
        if train is None and not self.subprocess:
            raise ValueError(
                "in-process trials need `train=`: the function that trains one config and returns its summary "
                "(lightning_tricks.commands.train.train, what `lightning-tricks train` runs)."
            )
        # Given by the caller (commands/tune.py) so that this package does not import the commands.
        self.train = train

    def trial_dir(self, number: int) -> Path:
        return self.run_dir / "trials" / f"{number:04d}"

    def trial_config(self, trial: Any, values: dict[str, Any]) -> DictConfig:
        """The train config of one trial: the fixed and sampled values, its own folder, logger and pruning."""
        cfg = copy.deepcopy(self.train_cfg)
        fixed = {s.key: s.choices[0] for s in self.fixed}
        for spec in [*self.fixed, *self.specs]:
            value = fixed[spec.key] if spec in self.fixed else values[spec.key]
            OmegaConf.update(cfg, spec.key, value, merge=False, force_add=spec.add)
        folder = self.trial_dir(trial.number)
        OmegaConf.update(cfg, "paths.output_dir", str(folder.resolve()), merge=False)
        study_name = trial.study.study_name
        loggers = cfg.get("logger")
        nodes = [loggers] if loggers and "_target_" in loggers else list((loggers or {}).values())
        for node in nodes:
            if node is not None and str(node.get("_target_", "")).endswith("WandbLogger"):
                with _open(node):
                    node.group = study_name  # one W&B run per trial, grouped by study
                    node.name = f"{node.name}-trial-{trial.number}" if node.get("name") else f"trial-{trial.number}"
        if self.pruning_monitor is not None:
            node = {
                "_target_": "lightning_tricks.callbacks.optuna_pruning.OptunaPruning",
                "monitor": self.pruning_monitor,
                "study_name": study_name,
                "trial_id": trial._trial_id,
                "pruner": self.pruner,  # a subprocess judges with the study's pruner, not Optuna's default
            }
            OmegaConf.update(cfg, "callbacks.optuna_pruning", node, merge=False, force_add=True)
        return cfg

    def overrides(self, values: dict[str, Any]) -> list[str]:
        from lightning_tricks.functional.search_space import to_overrides

        fixed = {s.key: s.choices[0] for s in self.fixed}
        return [*to_overrides(self.fixed, fixed), *to_overrides(self.specs, values)]

    def command(self, overrides: Sequence[str]) -> str:
        """The ``train`` command line that reruns a trial outside the study."""
        return shlex.join(["lightning-tricks", "train", *self.base_overrides, *overrides])

    def __call__(self, trial: optuna.Trial) -> float:
        values = suggest(trial, self.specs)
        overrides = self.overrides(values)
        trial.set_user_attr("overrides", overrides)
        cfg = self.trial_config(trial, values)
        folder = self.trial_dir(trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, folder / "trial.yaml")
        try:
            if self.subprocess:
                metrics, attrs = self._run_subprocess(trial, folder)
            else:
                with live_trial(trial):
                    metrics = self.train(cfg).metrics
                attrs = trial.user_attrs
            if "diverged_at" in attrs:
                raise TrialFailed(f"`{self.pruning_monitor}` became non-finite at validation {attrs['diverged_at']}")
            if "pruned_at" in attrs:
                raise optuna.TrialPruned(f"pruned at validation {attrs['pruned_at']}")
            value = metrics.get(self.metric)
            if value is None:
                raise TrialFailed(f"the run logged no `{self.metric}`; final metrics: {sorted(metrics)}")
            bad = {
                k: v for k, v in metrics.items() if (k == self.metric or k.endswith("/loss")) and not math.isfinite(v)
            }
            if bad:
                raise TrialFailed(f"non-finite final metrics {bad}")
            return float(value)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr("failure", f"{type(error).__name__}: {error}"[:1000])
            raise
        except KeyboardInterrupt:  # Ctrl-C: the trial fails as interrupted and runs again on resume
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise

    def _run_subprocess(self, trial: optuna.Trial, folder: Path) -> tuple[dict[str, float], dict[str, Any]]:
        result = folder / "result.json"
        result.unlink(missing_ok=True)
        env = {**os.environ, RESULT_ENV: str(result.resolve())}
        if self.storage_url is not None:
            env[STORAGE_ENV] = self.storage_url
        command = [sys.executable, "-m", "lightning_tricks", "train", "--config-dir", str(folder.resolve())]
        command += ["--config-name", "trial", f"hydra.run.dir={folder.resolve()}"]
        with (folder / "train.log").open("w") as output:
            proc = subprocess.run(command, env=env, stdout=output, stderr=subprocess.STDOUT, check=False)
        # The subprocess reported to the study: read the trial's attributes back from the storage.
        attrs = optuna.trial.Trial(trial.study, trial._trial_id).user_attrs
        if proc.returncode != 0 or not result.exists():
            tail = (folder / "train.log").read_text(errors="replace")[-2000:]
            raise TrialFailed(
                f"`lightning-tricks train` exited with {proc.returncode} ({folder / 'train.log'}):\n{tail}"
            )
        return json.loads(result.read_text()), attrs


# --------------------------------------------------------------------------------------------- worker
def _on_gpu() -> bool:
    """Collect garbage after each trial only where it frees accelerator memory (a full collection
    costs ~0.25 s, more than a tiny CPU trial; on CPU Python's own collector suffices)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


class SurplusTrial(RuntimeError):
    """Another worker started a trial at the same moment and the budget was already full."""


def _within_budget(study: optuna.Study, objective: Any, n_trials: int) -> Any:
    """``objective``, run only if the trials numbered before this one leave room in the budget.

    Checking the count and creating a trial are two steps, so two workers can both see ``n - 1`` and
    both start one. Trial numbers are unique and ordered, so the later of the two sees the earlier
    among its predecessors and stops before training. It ends FAIL without a ``failure`` attribute,
    so :func:`counted` does not count it.
    """

    def guarded(trial: optuna.Trial) -> float:
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if counted(earlier) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number}: the study already has {n_trials} trials; not run")
        return objective(trial)

    return guarded


def run_worker(
    study: optuna.Study,
    objective: Any,
    n_trials: int,
    timeout: float | None = None,
    poll: float = 1.0,
    shared: bool = True,
) -> None:
    """Run trials until the study has ``n_trials`` counted ones and none is running anywhere.

    ``shared`` (a database storage): wait for other workers' last trials, so that a dead worker's
    trial goes stale, fails, and runs again here, and the report covers every trial.
    """
    start = time.monotonic()
    while True:
        if shared:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if counted(trials) < n_trials:
            if timeout is not None and time.monotonic() - start > timeout:
                log.info("tune: timeout after %.0f s; %d trials counted", time.monotonic() - start, counted(trials))
                return
            study.optimize(
                _within_budget(study, objective, n_trials), n_trials=1, catch=(Exception,), gc_after_trial=_on_gpu()
            )
            continue
        if not shared or not any(t.state == TrialState.RUNNING for t in trials):
            return
        time.sleep(poll)
