"""MNIST's model choice: the CNN by default, a one-hidden-layer MLP with `hidden-units`."""

from __future__ import annotations

from typing import Any

import torch

from fedllm.tasks import get_task


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_hidden_units_give_an_mlp_of_795_h_plus_10_parameters(config: Any) -> None:
    task = get_task("mnist")
    cnn = task.build_model(config(task="mnist"), (1, 28, 28))
    mlp = task.build_model(config(task="mnist", hidden_units=1258), (1, 28, 28))
    assert _count(cnn) == 26_010
    assert _count(mlp) == 795 * 1258 + 10 == 1_000_120
    assert mlp(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
