"""Weight decay on weights only: the standard parameter grouping (recipe 5, regularise).

Decay pulls a weight matrix towards zero, which limits how much it can amplify its input. A bias or a
normalisation gain has no such role: decaying a BatchNorm/LayerNorm gain towards zero shrinks the
layer's output scale for no benefit, and decaying biases only fights the data. So, as in nanoGPT's
``configure_optimizers`` and timm's ``param_groups_weight_decay``, the rule is by shape:

- **decay**: every trainable parameter with ``ndim >= 2`` (Linear and Conv weights, Embedding tables);
- **no decay**: every trainable parameter with ``ndim < 2`` (biases, norm weights and biases, scalars),
  plus any parameter whose name is listed in ``no_decay`` (e.g. ``"pos_embedding"``).

Embeddings are decayed (as in nanoGPT, where the token embedding is tied to the output layer); list
them in ``no_decay`` to exempt them. Frozen parameters (``requires_grad=False``) are left out, and a
parameter shared by two modules (tied weights) appears once, as ``named_parameters()`` gives it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from lightning_tricks.utilities.arguments import check_float


def check_weight_decay(weight_decay: Any) -> float:
    """``weight_decay`` as a float, or a ``ValueError`` naming the argument, the value and what is allowed."""
    return check_float(weight_decay, "weight_decay", "a finite number >= 0", lambda v: v >= 0)


def decay_split(module: nn.Module, no_decay: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """``(decay_names, no_decay_names)``: the trainable parameters' names, split by the rule above.

    For inspection and logging; :func:`parameter_groups` uses the same split.

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2, bias=False))
    >>> decay_split(net)
    (['0.weight', '2.weight'], ['0.bias', '1.weight', '1.bias'])
    """
    exempt = set(no_decay)
    names = dict(module.named_parameters())
    unknown = exempt - set(names)
    if unknown:
        raise ValueError(f"`no_decay` names parameters the module does not have: {sorted(unknown)}.")
    decay, keep = [], []
    for name, param in names.items():
        if not param.requires_grad:
            continue  # frozen: an optimizer group for it would only cost memory
        (decay if param.ndim >= 2 and name not in exempt else keep).append(name)
    return decay, keep


def parameter_groups(module: nn.Module, weight_decay: float, no_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Optimizer parameter groups: ``weight_decay`` on weights, ``0.0`` on biases and norm parameters.

    The result goes straight into any torch optimizer; a group-level ``weight_decay`` overrides the
    optimizer's default. Empty groups are left out.

    >>> import torch
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    >>> groups = parameter_groups(net, 0.05)
    >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
    [(2, 0.05), (4, 0.0)]
    >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)
    """
    weight_decay = check_weight_decay(weight_decay)
    params = dict(module.named_parameters())
    decay, keep = decay_split(module, no_decay)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in keep], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
