"""The ServerApp's grid: a reply the SuperLink made itself for a node that went silent names
that node, and a strategy samples from one list of connected nodes."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from server.grid import NodesAsOf, PollingGrid
from tests.loopback_grid import LoopbackGrid
from tests.messages import instruction


class Wire:
    """The deployment grid's push and pull, in memory: each message pushed gets its id (as
    the SuperLink gives it), and the SuperLink answers for node 7, whose heartbeats lapsed."""

    def __init__(self) -> None:
        self.pushed: list[Message] = []

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as Flower's push does
            self.pushed.append(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [
            create_message_error_unavailable_res_message(msg.metadata, "node_unavail")
            for msg in self.pushed
            if msg.metadata.message_id in set(message_ids)
        ]


def test_a_superlink_error_reply_names_the_node_the_message_was_for() -> None:
    grid = PollingGrid(Wire())  # type: ignore[arg-type]
    (reply,) = grid.send_and_receive([instruction(7, RecordDict({"c": ConfigRecord()}))])
    assert reply.has_error() and "Node Unavailable" in str(reply.error.reason)
    assert reply.metadata.src_node_id == 7  # Flower's reply says SUPERLINK_NODE_ID (1)
    assert SUPERLINK_NODE_ID != 7


def test_nodes_as_of_answers_one_list_and_sends_through_the_grid() -> None:
    inner = LoopbackGrid([1, 2, 3], {"train": lambda msg, ctx: Message(RecordDict(), reply_to=msg)})
    grid = NodesAsOf(inner, [1, 2])
    inner.contexts.pop(1)  # node 1 leaves: the list taken stays
    assert list(grid.get_node_ids()) == [1, 2]
    (reply,) = grid.send_and_receive([instruction(2, RecordDict())])
    assert reply.metadata.src_node_id == 2 and inner.delivered == ["train"]
