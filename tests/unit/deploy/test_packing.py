"""A message's content as one object in deployment: the same records after the round trip,
fewer objects on the wire, a clear error for anything else, and both ends (the ServerApp's
grid, the ClientApp's mod) packing only in deployment."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from clients.client_app import packed_transfer
from fedllm import protocol as proto
from fedllm.deploy import packing
from server.grid import PollingGrid
from tests.messages import instruction


def _content() -> RecordDict:
    return RecordDict(
        {
            proto.ARRAYS: ArrayRecord(
                {"w": Array(np.arange(10, dtype=np.float32)), "b": Array(np.ones(1, np.float32))}
            ),
            proto.CONFIG: ConfigRecord({proto.SERVER_ROUND: 3, "blob": b"\x00\x01", "l": [1, 2]}),
            proto.METRICS: MetricRecord({proto.NUM_EXAMPLES: 12}),
        }
    )


def _same(a: RecordDict, b: RecordDict) -> bool:
    from flwr.common.serde import recorddict_to_proto

    return bool(recorddict_to_proto(a) == recorddict_to_proto(b))


def test_a_packed_content_is_three_objects_and_unpacks_to_the_same_records() -> None:
    content = _content()
    packed = packing.pack(content)
    assert list(packed) == [proto.PACKED]
    sent = instruction(7, packed)
    assert len(get_all_nested_objects(sent)) == 3  # message, RecordDict, one record
    assert len(get_all_nested_objects(instruction(7, content))) == 9  # arrays: 2 each
    unpacked = packing.unpack(packed)
    assert _same(unpacked, content)
    assert np.array_equal(unpacked[proto.ARRAYS]["w"].numpy(), np.arange(10, dtype=np.float32))


def test_a_content_that_would_not_be_fewer_objects_or_is_large_is_sent_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    single = RecordDict({proto.CONFIG: ConfigRecord({"a": 1})})
    assert packing.pack(single) is single
    monkeypatch.setattr(packing, "PACK_LIMIT", 8)
    content = _content()
    assert packing.pack(content) is content


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (RecordDict({proto.PACKED: ConfigRecord({proto.PACKED_CONTENT: b"\xff\xff"})}), "valid"),
        (RecordDict({proto.PACKED: ConfigRecord({proto.PACKED_CONTENT: "text"})}), "as bytes"),
        (
            RecordDict(
                {proto.PACKED: ConfigRecord({proto.PACKED_CONTENT: b""}), "x": ConfigRecord()}
            ),
            "holds only",
        ),
    ],
    ids=["garbage", "not-bytes", "extra-record"],
)
def test_a_malformed_packed_content_is_refused_naming_the_problem(
    content: RecordDict, problem: str
) -> None:
    with pytest.raises(packing.PackingError, match=problem):
        packing.unpack(content)


def test_a_content_without_the_packed_record_passes_as_it_is() -> None:
    content = _content()
    assert packing.unpack(content) is content


def test_the_clientapp_sees_the_records_sent_and_its_reply_leaves_packed() -> None:
    seen: list[RecordDict] = []

    def handler(msg: Message, context: Context) -> Message:
        seen.append(msg.content)
        return Message(_content(), reply_to=msg)

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = packed_transfer(instruction(7, packing.pack(_content())), context, handler)
    assert _same(seen[0], _content())
    assert list(reply.content) == [proto.PACKED] and _same(
        packing.unpack(reply.content), _content()
    )
    plain = packed_transfer(instruction(7, _content()), context, handler)  # simulation
    assert proto.PACKED not in seen[1] and proto.PACKED not in plain.content


class RecordingGrid:
    """The deployment grid's push and pull, in memory: what went on the wire."""

    def __init__(self) -> None:
        self.pushed: list[RecordDict] = []
        self.replies: list[Message] = []

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        self.pushed += [msg.content for msg in messages]
        return [str(i) for i, _ in enumerate(self.pushed)]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return self.replies


def test_the_serverapps_grid_packs_what_it_sends_and_unpacks_what_comes_back() -> None:
    wire = RecordingGrid()
    grid = PollingGrid(wire, packed=True)  # type: ignore[arg-type]
    message = instruction(7, _content())
    grid.push_messages([message])
    assert list(wire.pushed[0]) == [proto.PACKED]
    assert _same(message.content, _content())  # the caller's message as it made it
    wire.replies = [Message(packing.pack(_content()), reply_to=message)]
    (reply,) = grid.pull_messages(["0"])
    assert _same(reply.content, _content())


def test_the_simulations_grid_packs_nothing() -> None:
    wire: Any = RecordingGrid()
    PollingGrid(wire).push_messages([instruction(7, _content())])
    assert proto.PACKED not in wire.pushed[0]
