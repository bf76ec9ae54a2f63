"""Configs mirror constructors: every option of every group composes, instantiates, and names only real arguments."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from lightning_tricks.commands.train import build, instantiate_group

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml"))


def constructor_arguments(target: str) -> tuple[set[str], bool]:
    """Names a `_target_` accepts, following **kwargs up the MRO; and whether anything goes."""
    obj = get_object(target)
    if not inspect.isclass(obj):
        params = inspect.signature(obj).parameters.values()
        return {p.name for p in params}, any(p.kind is p.VAR_KEYWORD for p in params)
    names: set[str] = set()
    for cls in obj.__mro__:
        if "__init__" not in vars(cls):
            continue
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names, False
    return names, True


def assert_keys_are_arguments(node, where: str) -> None:
    if isinstance(node, dict):
        if "_target_" in node:
            accepted, anything = constructor_arguments(node["_target_"])
            keys = {k for k in node if not k.startswith("_")}
            unknown = keys - accepted
            assert anything or not unknown, f"{where}: {sorted(unknown)} are not arguments of {node['_target_']}"
        for key, value in node.items():
            assert_keys_are_arguments(value, f"{where}.{key}")


def test_every_group_has_the_options_the_product_promises() -> None:
    assert set(options("data")) >= {"digits", "mnist1d", "synthetic/classification", "synthetic/imbalanced"}
    assert "synthetic/regression" in options("data")
    assert set(options("model")) >= {"mlp", "cnn"}
    assert set(options("trainer")) >= {"cpu", "gpu", "ddp", "ddp_cpu"}
    assert set(options("logger")) >= {"wandb", "csv", "tensorboard", "none"}
    assert set(options("recipe")) >= {"none", "default"}
    assert set(options("scheduler")) >= {
        "none",
        "fixed",
        "step",
        "exp",
        "inv",
        "multistep",
        "poly",
        "sigmoid",
        "cyclical",
    }


@pytest.mark.parametrize("group", ["data", "model", "trainer", "logger", "recipe", "scheduler"])
def test_every_option_composes_and_names_real_arguments(group: str, compose_train) -> None:
    for option in options(group):
        cfg = compose_train(f"{group}={option}", tiny=False)
        container = OmegaConf.to_container(cfg, resolve=False)
        # A recipe fills several top-level keys; a scheduler is `# @package model` (it sets model.scheduler).
        node = {"recipe": container, "scheduler": container["model"]}.get(group) or container[group]
        assert_keys_are_arguments(node, f"{group}={option}")


@pytest.mark.parametrize("name", options("callbacks"))
def test_every_callback_yaml_instantiates_with_real_arguments(name: str, compose_train) -> None:
    required = {  # `???` in the YAML: the user's number
        "human_baseline": ["callbacks.human_baseline.value=0.97"],
        "last_checkpoint_steps": ["callbacks.last_checkpoint_steps.every_n_train_steps=100"],
    }
    cfg = compose_train("recipe=none", f"+callbacks@callbacks.{name}={name}", *required.get(name, []))
    node = OmegaConf.to_container(cfg.callbacks[name], resolve=True)
    assert_keys_are_arguments(node, f"callbacks/{name}.yaml")
    (callback,) = instantiate_group(cfg.callbacks, "callbacks")
    assert type(callback).__name__ == node["_target_"].rsplit(".", 1)[1]
    # every key reached the object (no silently ignored YAML key), where the object keeps it
    for key, value in node.items():
        if not key.startswith("_") and hasattr(callback, key) and isinstance(value, (int, float, str, bool)):
            assert getattr(callback, key) == value, f"callbacks/{name}.yaml: {key}"


def ours(name: str) -> bool:
    """Whether callbacks/<name>.yaml configures one of our callbacks (not one of Lightning's we reuse)."""
    return OmegaConf.load(CONF / "callbacks" / f"{name}.yaml")["_target_"].startswith("lightning_tricks.")


def test_the_callbacks_we_reuse_from_lightning_are_the_expected_ones() -> None:
    assert {n for n in options("callbacks") if not ours(n)} == {
        "model_checkpoint",
        "last_checkpoint",
        "last_checkpoint_steps",
        "rich_progress_bar",
        "learning_rate_monitor",
        "stochastic_weight_averaging",
        "ema_weight_averaging",
    }


@pytest.mark.parametrize("name", [n for n in options("callbacks") if ours(n)])
def test_our_callback_yamls_list_every_constructor_argument(name: str) -> None:
    """The YAML documents the whole constructor: a new argument missing from it fails here."""
    node = OmegaConf.to_container(OmegaConf.load(CONF / "callbacks" / f"{name}.yaml"))
    accepted, _ = constructor_arguments(node["_target_"])
    assert accepted == {k for k in node if not k.startswith("_")}, f"callbacks/{name}.yaml"


# The CNN needs (C, L) or (C, H, W) inputs; synthetic data is tabular, so it pairs with the MLP only.
PAIRS = [(d, "mlp") for d in options("data")] + [("digits", "cnn"), ("mnist1d", "cnn")]


@pytest.mark.parametrize(("data", "model"), PAIRS)
def test_every_data_and_model_pair_builds(data: str, model: str, compose_train) -> None:
    cfg = compose_train(f"data={data}", f"model={model}", "data.num_samples=200" if data != "digits" else "seed=1")
    datamodule, module, trainer = build(cfg)
    assert module.input_shape == tuple(datamodule.input_shape) and module.task == datamodule.task
    assert trainer.max_epochs == 2


def test_trainer_ddp_cpu_is_two_gloo_processes(compose_train) -> None:
    cfg = compose_train("trainer=ddp_cpu")
    trainer = instantiate(cfg.trainer, logger=False)
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DDPStrategy

    assert trainer.num_devices == 2 and isinstance(trainer.strategy, DDPStrategy)
    assert isinstance(trainer.accelerator, CPUAccelerator)  # so DDP picks gloo


def test_logger_none_means_no_logger(compose_train) -> None:
    cfg = compose_train("logger=none")
    assert instantiate_group(cfg.get("logger"), "logger") == []


def test_a_callback_can_be_switched_off(compose_train) -> None:
    def described(cfg) -> list[str]:  # the two ModelCheckpoints differ in what they monitor
        return [
            f"{type(c).__name__}:{getattr(c, 'monitor', '')}" for c in instantiate_group(cfg.callbacks, "callbacks")
        ]

    names = described(compose_train())
    assert {"ModelCheckpoint:val/loss", "ModelCheckpoint:None", "InitLossCheck:"} <= set(names)
    cfg = compose_train("callbacks.model_checkpoint=null", "callbacks.init_loss_check=null")
    assert described(cfg) == [n for n in names if n not in ("ModelCheckpoint:val/loss", "InitLossCheck:")]


def test_default_recipe_has_every_preflight_check_warning(compose_train) -> None:
    from lightning_tricks.callbacks import RecipeCheck

    checks = [c for c in instantiate_group(compose_train().callbacks, "callbacks") if isinstance(c, RecipeCheck)]
    assert sorted(c.name for c in checks) == [
        "gradient_dependency",
        "init_loss",
        "input_independent_baseline",
        "overfit_batch",
        "shuffle",
        "training_health",
    ]
    assert {c.on_failure for c in checks} == {"warn"}


def test_a_config_without_target_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"`callbacks.broken` must be a config with a `_target_`"):
        instantiate_group(OmegaConf.create({"broken": {"patience": 3}}), "callbacks")
