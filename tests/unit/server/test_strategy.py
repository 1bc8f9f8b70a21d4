"""The server keeps its last good model when an update or the aggregate is malformed."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message

from fedllm import protocol as proto
from fedllm.tasks.tabular import TabularModel
from fedllm.weights import to_arrays
from server.strategy import SiteAwareFedAvg
from tests.messages import reply, site_content


def _strategy(current: ArrayRecord) -> SiteAwareFedAvg:
    strategy = SiteAwareFedAvg(min_train_nodes=1, min_available_nodes=1)
    strategy.current = current
    return strategy


def _update(node: int, state: dict[str, torch.Tensor], examples: int = 10) -> Message:
    return reply(node, site_content(f"site-{node}", examples, **{proto.ARRAYS: ArrayRecord(state)}))


def _state(model: torch.nn.Module, fill: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, fill) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda s: s.update({"net.weight": torch.zeros(3, 3)}), "has shape"),
        (lambda s: s["net.bias"].fill_(float("nan")), "NaN or infinite"),
        (lambda s: s.update({"extra": torch.zeros(1)}), "extra \\['extra'\\]"),
    ],
)
def test_a_malformed_update_is_rejected_and_the_others_averaged(mutate: object, why: str) -> None:
    model = TabularModel(4, 0)
    strategy = _strategy(to_arrays(model))
    bad = _state(model, 9.0)
    mutate(bad)  # type: ignore[operator]
    arrays, _ = strategy.aggregate_train(
        1, [_update(1, _state(model, 1.0), 10), _update(2, _state(model, 3.0), 30), _update(3, bad)]
    )
    assert arrays is not None
    assert np.allclose(arrays["net.weight"].numpy(), 2.5)  # (1*10 + 3*30) / 40
    rejected = strategy.rejections(1)
    assert list(rejected) == ["update from site-3"]
    assert re.search(why, rejected["update from site-3"])


def test_when_every_update_is_malformed_the_previous_model_is_kept() -> None:
    model = TabularModel(4, 0)
    strategy = _strategy(to_arrays(model))
    bad = _state(model, float("inf"))
    arrays, metrics = strategy.aggregate_train(2, [_update(1, bad), _update(2, bad)])
    assert arrays is None and metrics is None  # Flower's loop keeps the current arrays
    assert set(strategy.rejections(2)) == {"update from site-1", "update from site-2"}


def test_a_malformed_aggregate_is_rejected() -> None:
    """Plain FedAvg of valid updates is valid; a secure aggregate is only checked as a whole."""
    model = TabularModel(4, 0)
    strategy = _strategy(to_arrays(model))
    bad = _state(model, 1.0)
    bad["net.bias"] = torch.tensor([float("nan")])
    assert strategy.validated(3, ArrayRecord(bad)) is None
    why = strategy.rejections(3)["aggregate"]
    assert "`net.bias` holds NaN" in why and "keeping the previous global model" in why
