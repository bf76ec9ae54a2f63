"""The protocol callbacks rely on: batches, losses, output layers, tasks — defaults, overrides, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from lightning_tricks.utilities.protocol import (
    AdapterError,
    ModelAdapter,
    TrickModule,
    check_task,
    find_output_layer,
    infer_task,
    loss_function,
    num_outputs,
    split_batch,
)

X, Y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])


class WithCriterion(LightningModule):
    def __init__(self, criterion: nn.Module | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3))
        self.criterion = criterion or nn.CrossEntropyLoss()

    def forward(self, x):
        return self.body(x)


class WithComputeLoss(LightningModule):
    """Loss is a method that scales the cross-entropy: the adapter must call it, not guess."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def compute_loss(self, outputs, targets):
        return 2.0 * F.cross_entropy(outputs, targets)


class ConvHead(LightningModule):
    """Fully convolutional: the last parametrised layer is a 1x1 conv, and an earlier Linear exists."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.head = nn.Conv1d(8, 5, kernel_size=1)

    def forward(self, x):
        return self.head(self.embed(x).unsqueeze(-1)).squeeze(-1)


def test_tuple_and_list_batches_split_into_first_two() -> None:
    assert split_batch((X, Y))[1] is Y
    assert split_batch([X, Y, "extra"])[0] is X


@pytest.mark.parametrize(("xkey", "ykey"), [("x", "y"), ("image", "label"), ("input_ids", "labels")])
def test_dict_batches_use_conventional_keys(xkey: str, ykey: str) -> None:
    inputs, targets = split_batch({xkey: X, ykey: Y, "meta": 0})
    assert inputs is X and targets is Y


def test_dict_batch_with_unknown_keys_names_the_keys_and_the_fix() -> None:
    with pytest.raises(AdapterError, match=r"\['pixels', 'truth'\].*split_batch"):
        split_batch({"pixels": X, "truth": Y})


def test_unsplittable_batch_says_what_to_provide() -> None:
    with pytest.raises(AdapterError, match=r"Tensor.*split_batch"):
        split_batch(X)


def test_split_override_and_module_method_win_over_convention() -> None:
    batch = {"pixels": X, "truth": Y}
    assert split_batch(batch, split=lambda b: (b["pixels"], b["truth"]))[1] is Y

    class Custom(TrickModule, nn.Module):
        def split_batch(self, batch):
            return batch["pixels"], batch["truth"]

    assert split_batch(batch, Custom())[0] is X
    with pytest.raises(AdapterError, match="must return"):
        split_batch(batch, split=lambda b: b["pixels"])


def test_loss_from_criterion_attribute() -> None:
    module = WithCriterion()
    out = module(X)
    assert torch.equal(loss_function(module)(out, Y), F.cross_entropy(out, Y))
    assert infer_task(module) == "multiclass"


def test_loss_from_compute_loss_method_is_preferred() -> None:
    module = WithComputeLoss()
    out = module.fc(X)
    assert torch.allclose(ModelAdapter().loss(module, out, Y), 2.0 * F.cross_entropy(out, Y))


def test_missing_loss_says_what_to_define() -> None:
    with pytest.raises(AdapterError, match=r"compute_loss.*criterion.*loss_fn"):
        loss_function(nn.Linear(3, 3))
    with pytest.raises(AdapterError, match="callable"):
        loss_function(nn.Linear(3, 3), loss_fn="mse")


def test_output_layer_is_last_linear() -> None:
    name, layer = find_output_layer(WithCriterion())
    assert name == "body.2" and layer.out_features == 3


def test_last_layer_not_linear_is_refused_not_guessed() -> None:
    # Picking `embed` (the last nn.Linear) would be silently wrong: the error names `head` instead.
    with pytest.raises(AdapterError, match=r"'head'.*Conv1d.*output_layer='head'"):
        find_output_layer(ConvHead())
    model = ConvHead()
    name, layer = find_output_layer(model, "head")
    assert name == "head" and layer is model.head and num_outputs(layer) == 5
    assert ModelAdapter(output_layer="head").output_layer_of(model)[1] is model.head


def test_output_layer_from_module_attributes() -> None:
    class Named(TrickModule, ConvHead):
        output_layer_name = "head"

    assert find_output_layer(Named())[0] == "head"

    class Attr(ConvHead):
        @property
        def output_layer(self):
            return self.head

    model = Attr()
    assert find_output_layer(model) == ("head", model.head)


def test_unknown_output_layer_name_lists_candidates() -> None:
    with pytest.raises(AdapterError, match=r"'fc9'.*\['embed', 'head'\]"):
        find_output_layer(ConvHead(), "fc9")


@pytest.mark.parametrize(
    ("criterion", "outputs", "task"),
    [
        (nn.CrossEntropyLoss(), 3, "multiclass"),
        (nn.NLLLoss(), 3, "multiclass"),
        (nn.BCEWithLogitsLoss(), 1, "binary"),
        (nn.BCEWithLogitsLoss(), 3, "multilabel"),
        (nn.MSELoss(), 2, "regression"),
        (F.cross_entropy, 3, "multiclass"),
        (F.binary_cross_entropy_with_logits, 1, "binary"),
        (F.mse_loss, 1, "regression"),
    ],
)
def test_task_inferred_from_loss(criterion, outputs: int, task: str) -> None:
    module = nn.Module()
    module.fc = nn.Linear(3, outputs)
    module.criterion = criterion
    assert infer_task(module) == task


def test_task_attribute_and_explicit_task_win_and_are_checked() -> None:
    module = WithCriterion(nn.MSELoss())
    assert infer_task(module) == "regression"
    assert infer_task(module, task="binary") == "binary"
    module.task = "multilabel"
    assert infer_task(module) == "multilabel"
    module.task = "segmentation"
    with pytest.raises(ValueError, match=r"WithCriterion.task.*'segmentation'"):
        infer_task(module)


def test_uninferable_task_asks_for_task() -> None:
    module = WithCriterion(lambda out, y: (out - y).abs().mean())
    with pytest.raises(AdapterError, match="pass `task=`"):
        infer_task(module)


def test_unknown_task_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"`task` must be one of .*'multiclass'.*got 'clasification'"):
        ModelAdapter(task="clasification")
    with pytest.raises(ValueError, match="'auto'"):
        check_task("auto")
    assert check_task("auto", allow_auto=True) == "auto"


def test_trick_module_defaults() -> None:
    class Net(TrickModule, LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.criterion = nn.CrossEntropyLoss()

    net = Net()
    inputs, targets = net.split_batch({"x": X, "y": Y})
    assert torch.equal(net.compute_loss(net.fc(inputs), targets), F.cross_entropy(net.fc(X), Y))
    del net.criterion
    with pytest.raises(AdapterError, match="criterion"):
        net.compute_loss(net.fc(X), Y)


def test_public_names_resolve_lazily() -> None:
    import lightning_tricks

    for name in lightning_tricks.__all__:
        assert getattr(lightning_tricks, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'SeedEverythin'"):
        lightning_tricks.SeedEverythin  # noqa: B018
