"""The round's replies sorted once: malformed updates rejected and the others averaged, the
last good model kept, refusals, dropouts and the run's stop when no sampled site can train."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.serverapp.strategy import strategy_utils

from fedllm import protocol as proto
from fedllm.errors import FedLLMError
from fedllm.tasks.tabular import TabularModel
from fedllm.weights import to_arrays
from server.aggregation import PlainAveraging
from server.replies import NoSiteCanTrain
from server.site_records import SiteRecords
from server.strategies import FedAdam, FedAvg
from tests.loopback_grid import LoopbackGrid
from tests.messages import instruction, reply, site_content

NODES = [1, 2, 3]


def _records(current: ArrayRecord, server_round: int = 1) -> SiteRecords:
    """Plain FedAvg with site records, the round configured (every node sampled)."""
    averaging = PlainAveraging()
    records = SiteRecords(FedAvg(averaging, min_train_nodes=1, min_available_nodes=1), averaging)
    instruction(NODES[0], RecordDict())  # sets Flower's task identity for messages
    records.configure_train(server_round, current, ConfigRecord(), LoopbackGrid(NODES, {}))
    return records


def _update(node: int, state: dict[str, torch.Tensor], examples: int = 10) -> Message:
    return reply(node, site_content(f"site-{node}", examples, **{proto.ARRAYS: ArrayRecord(state)}))


def _refusal(node: int, kind: str = "budget") -> Message:
    refused = ConfigRecord({proto.REFUSAL_KIND: kind, proto.REFUSAL_REASON: "budget spent"})
    return reply(node, site_content(f"site-{node}", 0, **{proto.REFUSAL: refused}))


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
    records = _records(to_arrays(model))
    bad = _state(model, 9.0)
    mutate(bad)  # type: ignore[operator]
    arrays, _ = records.aggregate_train(
        1, [_update(1, _state(model, 1.0), 10), _update(2, _state(model, 3.0), 30), _update(3, bad)]
    )
    assert arrays is not None
    assert np.allclose(arrays["net.weight"].numpy(), 2.5)  # (1*10 + 3*30) / 40
    rejected = records.logs[1].rejected
    assert list(rejected) == ["update from site-3"]
    assert re.search(why, rejected["update from site-3"])
    assert sorted(records.logs[1].trained) == ["site-1", "site-2"]


def test_when_every_update_is_malformed_the_previous_model_is_kept() -> None:
    model = TabularModel(4, 0)
    records = _records(to_arrays(model), server_round=2)
    bad = _state(model, float("inf"))
    arrays, metrics = records.aggregate_train(2, [_update(1, bad), _update(2, bad)])
    assert arrays is None and metrics is None  # Flower's loop keeps the current arrays
    assert set(records.logs[2].rejected) == {"update from site-1", "update from site-2"}


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_a_malformed_aggregate_is_rejected() -> None:
    """A server rule that yields NaN (FedAdam with tau = 0 where the mean does not move) is
    caught before it becomes the global model."""
    model = TabularModel(4, 0)
    current = to_arrays(model)
    averaging = PlainAveraging()
    strategy = FedAdam(averaging, 0.1, min_train_nodes=1, min_available_nodes=1)
    strategy.tau = 0.0
    records = SiteRecords(strategy, averaging)
    instruction(NODES[0], RecordDict())
    records.configure_train(3, current, ConfigRecord(), LoopbackGrid(NODES, {}))
    unchanged = {k: torch.from_numpy(a.numpy().copy()) for k, a in current.items()}
    arrays, _ = records.aggregate_train(3, [_update(1, unchanged)])
    assert arrays is None
    why = records.logs[3].rejected["aggregate"]
    assert "holds NaN" in why and "keeping the previous global model" in why


def test_refusals_are_recorded_and_the_others_trained() -> None:
    model = TabularModel(4, 0)
    records = _records(to_arrays(model))
    arrays, _ = records.aggregate_train(
        1, [_update(1, _state(model, 1.0)), _refusal(2), _update(3, _state(model, 1.0))]
    )
    assert arrays is not None
    refused = records.logs[1].refused["site-2"]
    assert (refused.kind, refused.reason) == ("budget", "budget spent")


def test_when_every_sampled_site_refuses_the_run_stops() -> None:
    records = _records(to_arrays(TabularModel(4, 0)))
    with pytest.raises(NoSiteCanTrain, match=r"round 1: no sampled site can train: site-1 \("):
        records.aggregate_train(1, [_refusal(1), _refusal(2, "policy"), _refusal(3)])


def test_a_site_that_does_not_answer_is_named_and_not_asked_to_evaluate() -> None:
    model = TabularModel(4, 0)
    records = _records(to_arrays(model))
    lost = Message(
        Error(code=0, reason="killed\nnode 3 gone"),
        reply_to=instruction(3, RecordDict()),
    )
    arrays, _ = records.aggregate_train(
        1, [_update(1, _state(model, 1.0)), _update(2, _state(model, 2.0)), lost]
    )
    assert arrays is not None
    assert records.logs[1].dropped == {"node-3": "train: node 3 gone"}
    grid = LoopbackGrid(NODES, {})
    asked = records.configure_evaluate(1, to_arrays(model), ConfigRecord(), grid)
    assert sorted(msg.metadata.dst_node_id for msg in asked) == [1, 2]


def test_when_every_site_fails_the_run_fails_with_the_first_error() -> None:
    records = _records(to_arrays(TabularModel(4, 0)))
    failed = [
        Message(Error(code=0, reason=f"site {n} crashed"), reply_to=instruction(n, RecordDict()))
        for n in NODES
    ]
    with pytest.raises(FedLLMError, match="no site returned a valid update; first error: site"):
        records.aggregate_train(1, failed)


class Reconnecting(LoopbackGrid):
    """A federation whose last node connects (a restarted site back) at the ``joins_at``-th
    look at the connected nodes."""

    def __init__(self, nodes: list[int], joins_at: int) -> None:
        super().__init__(nodes, {})
        self.looks, self.joins_at = 0, joins_at

    def get_node_ids(self) -> list[int]:
        self.looks += 1
        nodes = list(self.contexts)
        return nodes if self.looks >= self.joins_at else nodes[:-1]


@pytest.mark.parametrize(
    ("nodes", "joins_at"),
    [
        ([1, 2, 3], 2),  # back while the round waits for min_available_nodes (3)
        ([1, 2, 3, 4], 3),  # one more connects between the sample's size and its draw
    ],
)
def test_a_site_connecting_while_the_round_samples_leaves_no_connected_site_out(
    nodes: list[int], joins_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flower's FedAvg sizes the sample on one look (fraction x connected) and draws it on the
    # next, after waiting for min_available_nodes: one more node in between and a healthy site
    # is left out at random. One list for both: every node connected when it was taken.
    # Flower draws with random.sample: here the last nodes, so a left-out node is always seen.
    last = SimpleNamespace(sample=lambda nodes, k: list(nodes)[-k:])
    monkeypatch.setattr(strategy_utils, "random", last)
    averaging = PlainAveraging()
    records = SiteRecords(FedAvg(averaging, min_train_nodes=2, min_available_nodes=3), averaging)
    model = TabularModel(4, 0)
    instruction(NODES[0], RecordDict())
    grid = Reconnecting(nodes, joins_at)
    sent = records.configure_train(1, to_arrays(model), ConfigRecord(), grid)
    assert sorted(msg.metadata.dst_node_id for msg in sent) == [1, 2, 3]
    assert records.logs[1].left_out == {}


def test_a_site_not_asked_to_train_is_recorded_with_the_reason() -> None:
    averaging = PlainAveraging()
    strategy = FedAvg(averaging, fraction_train=0.5, min_train_nodes=1, min_available_nodes=1)
    records = SiteRecords(strategy, averaging)
    records.node_names = {1: "site-1", 2: "site-2", 3: "site-3", 4: "site-4"}  # 4 has gone
    model = TabularModel(4, 0)
    instruction(NODES[0], RecordDict())
    sent = records.configure_train(1, to_arrays(model), ConfigRecord(), LoopbackGrid(NODES, {}))
    asked = {msg.metadata.dst_node_id for msg in sent}
    assert len(asked) == 1  # int(3 x 0.5)
    left_out = records.logs[1].left_out
    assert set(left_out) == {f"site-{n}" for n in set(NODES) - asked} | {"site-4"}
    assert all(
        "not sampled: 1 of the 3 connected sites" in left_out[f"site-{n}"]
        for n in set(NODES) - asked
    )
    assert "not connected" in left_out["site-4"]
