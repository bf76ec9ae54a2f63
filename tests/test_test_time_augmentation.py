"""Recipe 6 — TestTimeAugmentation: averaged probabilities over views, exact on 1 and 2 ranks, nothing perturbed."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tricks import TestTimeAugmentation
from lightning_tricks.commands.train import instantiate_group
from lightning_tricks.functional.tta import (
    TTAResult,
    batch_totals,
    combine_outputs,
    mean_probabilities,
    to_probabilities,
)
from lightning_tricks.testing import run_ddp

KEYS = ("tricks/tta/test_acc", "tricks/tta/test_acc_no_tta", "tricks/tta/test_loss", "tricks/tta/test_loss_no_tta")


class Fixed(pl.LightningModule):
    """A fixed linear classifier on flattened inputs; test_step logs Lightning's own plain loss and accuracy."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, data: TensorDataset, batch_size: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.dropout = nn.Dropout(0.5)  # identity in eval mode; random (so visible) in train mode
        self.criterion = nn.CrossEntropyLoss()
        self.data, self.batch_size = data, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x.flatten(1)))

    def test_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("test/loss", self.criterion(out, y), batch_size=len(y), sync_dist=True)
        self.log("test/acc", (out.argmax(-1) == y).float().mean(), batch_size=len(y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(TensorDataset(self.data.tensors[0]), batch_size=self.batch_size)


def make_trainer(devices: int = 1, callbacks: list | None = None, logger=False, **kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                      callbacks=callbacks, logger=logger, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, **kwargs)  # fmt: skip


def by_hand(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The views of (N, 1, L) signals written out index by index (edges repeated)."""
    length = x.shape[-1]
    right = [0, *range(length - 1)]  # content moved one step right: x'[i] = x[i - 1], x'[0] = x[0]
    left = [*range(1, length), length - 1]
    return {"identity": x, "shift:1": x[..., right], "shift:-1": x[..., left], "hflip": x[..., range(length)[::-1]]}


def closed_form_data(
    n: int = 10, length: int = 5, classes: int = 3
) -> tuple[torch.Tensor, torch.Tensor, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(classes, length, generator=g), torch.randn(classes, generator=g)
    x, y = torch.randn(n, 1, length, generator=g), torch.randint(0, classes, (n,), generator=g)
    return weight, bias, TensorDataset(x, y)


def test_tta_numbers_equal_a_manual_average_of_softmax_and_no_tta_equals_lightning(tmp_path: Path) -> None:
    weight, bias, data = closed_form_data()
    callback = TestTimeAugmentation(views=["identity", "shift:1", "shift:-1", "hflip"])
    logger = CSVLogger(tmp_path, name="csv", version="")
    (metrics,) = make_trainer(callbacks=[callback], logger=logger, default_root_dir=tmp_path).test(
        Fixed(weight, bias, data), verbose=False
    )
    x, y = data.tensors
    logits = {name: x_view.flatten(1) @ weight.T + bias for name, x_view in by_hand(x).items()}
    p = torch.stack([lg.double().softmax(-1) for lg in logits.values()]).mean(0)
    assert metrics["tricks/tta/test_acc"] == pytest.approx(float((p.argmax(-1) == y).double().mean()), abs=1e-6)
    assert metrics["tricks/tta/test_loss"] == pytest.approx(float(-p[range(len(y)), y].log().mean()), abs=1e-6)
    plain = logits["identity"]
    assert metrics["tricks/tta/test_loss_no_tta"] == pytest.approx(float(F.cross_entropy(plain, y)), abs=1e-6)
    # Lightning's own single-process test metrics are the no-TTA numbers
    assert metrics["tricks/tta/test_loss_no_tta"] == pytest.approx(metrics["test/loss"], abs=1e-6)
    assert metrics["tricks/tta/test_acc_no_tta"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    result = callback.result
    assert result.views == ("identity", "shift:1", "shift:-1", "hflip") and result.count == 10
    for name, view_acc in zip(result.views, result.view_metrics, strict=True):
        assert view_acc == pytest.approx(float((logits[name].argmax(-1) == y).double().mean()), abs=1e-9)
    # the table: one row per view, then the TTA mean, as CSV next to the CSV logger's metrics
    (table,) = (Path(logger.log_dir) / "media").glob("tricks_tta_test_table*.csv")
    rows = list(csv.reader(table.open()))
    assert rows[0] == ["view", "acc", "loss"] and [r[0] for r in rows[1:]] == [*result.views, "TTA mean"]
    assert float(rows[-1][1]) == pytest.approx(result.metric)


def shift_model_and_data() -> tuple[torch.Tensor, torch.Tensor, TensorDataset]:
    """Class 0 is "content at an edge" (logit 10 per edge sample), class 1 a constant logit 1.

    Class-0 signals have their bump one step *inside* an edge, so the model gets them wrong as they
    are (logits (0, 1)) and right once a shift moves the bump onto the edge: with the identity and a
    shift each way, the mean probability of class 0 is (2 sigmoid(-1) + sigmoid(9)) / 3 = 0.5126.
    Class-1 signals (bump in the middle) are right in every view.
    """
    weight = torch.tensor([[10.0, 0, 0, 0, 10], [0, 0, 0, 0, 0]])
    bias = torch.tensor([0.0, 1.0])
    x = torch.eye(5)[[1, 3, 2, 1, 3, 2]].view(6, 1, 5)
    y = torch.tensor([0, 0, 1, 0, 0, 1])
    return weight, bias, TensorDataset(x, y)


def test_tta_fixes_a_model_that_is_right_only_on_shifted_inputs() -> None:
    weight, bias, data = shift_model_and_data()
    callback = TestTimeAugmentation(views=["shift:1", "shift:-1"])  # identity is prepended
    (metrics,) = make_trainer(callbacks=[callback]).test(Fixed(weight, bias, data), verbose=False)
    assert callback.result.views == ("identity", "shift:1", "shift:-1")
    assert metrics["tricks/tta/test_acc_no_tta"] == pytest.approx(2 / 6) == metrics["test/acc"]
    assert metrics["tricks/tta/test_acc"] == pytest.approx(1.0)
    sig = torch.sigmoid(torch.tensor([-1.0, 9.0, 1.0], dtype=torch.float64))
    p0 = (2 * sig[0] + sig[1]) / 3  # class-0 samples; class-1 ones: sigmoid(1) in every view
    expected = float(-(4 * p0.log() + 2 * sig[2].log()) / 6)
    assert metrics["tricks/tta/test_loss"] == pytest.approx(expected, abs=1e-6)


def test_a_single_identity_view_gives_exactly_the_no_tta_numbers() -> None:
    weight, bias, data = closed_form_data(n=11)
    callback = TestTimeAugmentation(views=["identity"])
    (metrics,) = make_trainer(callbacks=[callback]).test(Fixed(weight, bias, data), verbose=False)
    assert metrics["tricks/tta/test_acc"] == metrics["tricks/tta/test_acc_no_tta"]
    assert metrics["tricks/tta/test_loss"] == metrics["tricks/tta/test_loss_no_tta"]
    assert metrics["tricks/tta/test_loss"] == pytest.approx(metrics["test/loss"], abs=1e-6)
    # ... while real views on the same model do change the numbers (so the equality above means something)
    callback = TestTimeAugmentation(views=["identity", "hflip"])
    (metrics,) = make_trainer(callbacks=[callback]).test(Fixed(weight, bias, data), verbose=False)
    assert metrics["tricks/tta/test_loss"] != pytest.approx(metrics["tricks/tta/test_loss_no_tta"], abs=1e-3)


def test_predictions_are_the_averaged_probabilities_in_data_set_order() -> None:
    weight, bias, data = closed_form_data(n=7)
    callback = TestTimeAugmentation(views=["identity", "shift:1"])
    outputs = make_trainer(callbacks=[callback]).predict(Fixed(weight, bias, data))
    x = data.tensors[0]
    expected = torch.stack([(v.flatten(1) @ weight.T + bias).softmax(-1) for v in list(by_hand(x).values())[:2]])
    assert callback.predictions.shape == (7, 3)
    torch.testing.assert_close(callback.predictions, expected.mean(0))
    assert torch.cat(outputs).shape == (7, 3)  # Lightning's own predictions are left alone


class Record(Callback):
    """Captures the global RNG state and every submodule's mode when its on_test_epoch_end runs."""

    def on_test_start(self, trainer, pl_module):
        pl_module.dropout.train()  # a user's choice (MC dropout): TTA must evaluate in eval mode and keep this

    def on_test_epoch_end(self, trainer, pl_module):
        self.rng = torch.get_rng_state()
        self.modes = [m.training for m in pl_module.modules()]


def test_the_run_is_not_perturbed_modes_and_rng_are_restored() -> None:
    weight, bias, data = closed_form_data(n=9)
    before, after = Record(), Record()
    callback = TestTimeAugmentation(views=["identity", "shift:1"])
    model = Fixed(weight, bias, data)
    make_trainer(callbacks=[before, callback, after]).test(model, verbose=False)
    assert after.modes == before.modes and after.modes[model_index(model, model.dropout)] is True
    assert torch.equal(after.rng, before.rng)  # iterating a DataLoader draws from the global RNG; isolated here
    # evaluation ran with dropout off: TTA numbers are the deterministic ones
    assert callback.result.view_metrics[0] == pytest.approx(
        float(((data.tensors[0].flatten(1) @ weight.T + bias).argmax(-1) == data.tensors[1]).double().mean())
    )
    assert not list(model._forward_hooks.values()) and not list(model.linear._forward_hooks.values())


def model_index(model: nn.Module, sub: nn.Module) -> int:
    return next(i for i, m in enumerate(model.modules()) if m is sub)


@pytest.mark.parametrize(
    ("views", "match"),
    [
        (["identity", "shfit:1"], r"`views` has an invalid view 'shfit:1' \(unknown kind 'shfit'"),
        (["shift:1.5,0"], r"`views` has an invalid view 'shift:1.5,0' \(a shift is 1 \(signals\) or 2"),
        (["shift"], r"`views` has an invalid view 'shift' \('shift' needs an argument"),
        (["rotate:abc"], r"`views` has an invalid view 'rotate:abc' \('abc' is not a list of numbers"),
        ([{"shift": [1, 0], "rotate": 3}], r"`views` has an invalid view .*exactly one key"),
        (["hflip", {"hflip": True}], r"`views` lists the same view twice: \['hflip'\]"),
        (["identity", "shift:0,0"], r"`views` lists the same view twice: \['identity'\]"),
        ([], r"`views` must be a non-empty list of views"),
        ([3], r"`views` has an invalid view 3 \(a int is not a view\)"),
    ],
)
def test_bad_view_specs_are_named_errors(views, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TestTimeAugmentation(views=views)


def test_a_view_that_does_not_fit_the_inputs_says_which_and_why() -> None:
    weight, bias, data = closed_form_data()  # (N, 1, L) signals: a 2-D shift does not apply
    with pytest.raises(ValueError, match=r"the view 'shift:1,0' \(from `views`\) does not apply to inputs of shape"):
        make_trainer(callbacks=[TestTimeAugmentation(views=["shift:1,0"])]).test(
            Fixed(weight, bias, data), verbose=False
        )


def test_default_views_follow_the_input_shape() -> None:
    from lightning_tricks.callbacks.test_time_augmentation import default_views

    assert [v.name for v in default_views(torch.zeros(2, 1, 8, 8))] == [
        "identity", "shift:1,0", "shift:-1,0", "shift:0,1", "shift:0,-1"
    ]  # fmt: skip
    assert [v.name for v in default_views(torch.zeros(2, 1, 40))] == ["identity", "shift:1", "shift:-1"]
    with pytest.raises(ValueError, match=r"`views=None` .* shape \(2, 5\); pass `views=` explicitly"):
        default_views(torch.zeros(2, 5))


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_combined_outputs_are_the_mean_probabilities_in_the_models_output_space(task: str) -> None:
    g = torch.Generator().manual_seed(1)
    outputs = [torch.randn(6, 4, generator=g) * 5 for _ in range(3)]
    combined = combine_outputs(outputs, task)
    torch.testing.assert_close(to_probabilities(combined, task), mean_probabilities(outputs, task))
    assert combine_outputs(outputs[:1], task) is outputs[0]  # one view: the outputs, bit for bit
    # no underflow: a confident wrong view leaves a finite log-probability
    extreme = combine_outputs([torch.tensor([[200.0, -200.0]]), torch.tensor([[200.0, -200.0]])], "multiclass")
    assert torch.isfinite(extreme).all()


def test_totals_sum_per_sample_losses_and_divide_once() -> None:
    outputs = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    targets = torch.tensor([0, 0, 1])
    # batches of 2 and 1: sum(mean x size) / N is the whole set's mean, not the mean of batch means
    totals = sum(
        batch_totals([outputs[s]], targets[s], "multiclass", F.cross_entropy) for s in (slice(0, 2), slice(2, 3))
    )
    result = TTAResult.from_totals(totals, ["identity"], "multiclass")
    assert result.count == 3 and result.metric == pytest.approx(1 / 3) == result.metric_no_tta
    assert result.loss == pytest.approx(float(F.cross_entropy(outputs, targets)), abs=1e-6)
    regression = batch_totals([torch.tensor([[1.0], [3.0]])], torch.tensor([[0.0], [0.0]]), "regression", F.l1_loss)
    assert TTAResult.from_totals(regression, ["identity"], "regression").metric == pytest.approx(2.0)


def test_views_compose_from_hydra_yaml(compose_train) -> None:
    cfg = compose_train(
        "recipe=none",
        "+callbacks@callbacks.test_time_augmentation=test_time_augmentation",
        "callbacks.test_time_augmentation.views=[hflip,'shift:1,0',{rotate:10}]",
    )
    (callback,) = instantiate_group(cfg.callbacks, "callbacks")
    assert [v.name for v in callback.views] == ["identity", "hflip", "shift:1,0", "rotate:10"]
    default = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/callbacks/test_time_augmentation.yaml")
    assert default.views is None  # identity + 1-step shifts along every spatial axis, chosen from the inputs


N_DDP = 101  # not a multiple of 2 ranks x batch 4: Lightning pads the DistributedSampler


def ddp_numbers(devices: int) -> dict:
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(3, 16, generator=g), torch.randn(3, generator=g)
    x, y = torch.randn(N_DDP, 1, 4, 4, generator=g), torch.randint(0, 3, (N_DDP,), generator=g)
    model = Fixed(weight, bias, TensorDataset(x, y), batch_size=4)
    callback = TestTimeAugmentation()  # default views: identity + four 1-pixel shifts
    trainer = make_trainer(devices=devices, callbacks=[callback])
    (metrics,) = trainer.test(model, verbose=False)
    trainer.predict(model, return_predictions=False)
    return {
        "metrics": {k: float(v) for k, v in metrics.items()},
        "result": callback.result,
        "predictions": callback.predictions.clone(),
    }


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_equal_one_process_on_an_uneven_set() -> None:
    single = ddp_numbers(devices=1)
    rank0, rank1 = run_ddp(ddp_numbers, devices=2, timeout=240)
    assert single["result"].count == rank0["result"].count == rank1["result"].count == N_DDP
    for key in KEYS:
        assert rank0["metrics"][key] == pytest.approx(single["metrics"][key], abs=1e-6) == rank1["metrics"][key]
    for field in ("view_losses", "view_metrics"):
        assert getattr(rank0["result"], field) == pytest.approx(getattr(single["result"], field), abs=1e-6)
    assert rank0["predictions"].shape == (N_DDP, 3)
    torch.testing.assert_close(rank0["predictions"], single["predictions"], atol=1e-6, rtol=0)
    torch.testing.assert_close(rank1["predictions"], single["predictions"], atol=1e-6, rtol=0)
    # Lightning's own sync_dist epoch mean equals ours in one process, but counts DDP's padded duplicate
    assert single["metrics"]["test/loss"] == pytest.approx(single["metrics"]["tricks/tta/test_loss_no_tta"], abs=1e-6)
    assert abs(rank0["metrics"]["test/loss"] - rank0["metrics"]["tricks/tta/test_loss_no_tta"]) > 1e-4
