"""A Grid that waits for replies with a short poll instead of Flower's fixed 3 s (0.1 s).

Flower 1.42's deployment Grid (``flwr.superlink.grid.http_grid``) sleeps 3 s between reply
checks, so every stage of a round (train, evaluate) waits 1.5 s on average after the last site
answered; for a small model that is most of a round. The simulation's in-memory Grid sleeps
0.1 s, which matters as much for a stage of a small model (a SecAgg+ round has two). Wrapping
(every other call delegates) keeps Flower's behaviour otherwise: the same push, the same pull,
the same timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedllm.deploy import packing

POLL_INTERVAL = 0.1  # seconds between reply checks (Flower: 3)
SIMULATION_POLL_INTERVAL = 0.01  # in-memory checks (Flower: 0.1): no network call each


def polling(grid: Grid) -> Grid:
    """Deployment's Grid wrapped to poll every 0.1 s, the simulation's every 0.01 s."""
    from flwr.superlink.grid import HttpGrid, InMemoryGrid

    if isinstance(grid, HttpGrid):
        from flwr.superlink.grid import http_grid

        from fedllm.deploy.polling import quick_object_retries

        quick_object_retries(http_grid)  # a reply's objects may still be on their way
        return PollingGrid(grid, packed=True)
    if isinstance(grid, InMemoryGrid):
        return PollingGrid(grid, SIMULATION_POLL_INTERVAL)
    return grid


class DelegatingGrid(Grid):
    """A Grid that hands every call to ``grid``; subclasses change what they need."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


class PollingGrid(DelegatingGrid):
    """``grid`` with replies collected every ``interval`` seconds; with ``packed``, every
    content sent as one object and every packed reply unpacked (deployment:
    :mod:`fedllm.deploy.packing`)."""

    def __init__(self, grid: Grid, interval: float = POLL_INTERVAL, packed: bool = False) -> None:
        super().__init__(grid)
        self.interval = interval
        self.packed = packed

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        if not self.packed:
            return self.grid.push_messages(messages)
        messages = list(messages)
        contents = [msg.content if msg.has_content() else None for msg in messages]
        for msg, content in zip(messages, contents, strict=True):
            if content is not None:
                msg.content = packing.pack(content)
        try:
            return self.grid.push_messages(messages)
        finally:  # the caller's messages as it made them
            for msg, content in zip(messages, contents, strict=True):
                if content is not None:
                    msg.content = content

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        if self.packed:
            for msg in replies:
                if msg.has_content():
                    msg.content = packing.unpack(msg.content)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """As Flower's: push, then pull until every reply is in or ``timeout`` passed. An error
        reply the SuperLink made itself (the node's heartbeats lapsed) names the node the
        message was for as its sender, not the SuperLink (Flower: node 1)."""
        messages = list(messages)
        ids = list(self.push_messages(messages))
        asked = {i: msg.metadata.dst_node_id for i, msg in zip(ids, messages, strict=True) if i}
        pending = set(asked)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while True:
            got = list(self.pull_messages(pending))
            for msg in got:
                node = asked.get(msg.metadata.reply_to_message_id)
                if msg.has_error() and msg.metadata.src_node_id == SUPERLINK_NODE_ID and node:
                    msg.metadata.__dict__["_src_node_id"] = node  # Flower's Metadata has no setter
            replies.extend(got)
            pending.difference_update(msg.metadata.reply_to_message_id for msg in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                return replies
            time.sleep(self.interval)


def connected(grid: Grid, minimum: int) -> list[int]:
    """The nodes connected now, once at least ``minimum`` are (checked every second)."""
    while len(nodes := list(grid.get_node_ids())) < minimum:
        log(
            INFO,
            "Waiting for nodes to connect: %d connected (minimum required: %d).",
            len(nodes),
            minimum,
        )
        time.sleep(1)
    return nodes


class NodesAsOf(DelegatingGrid):
    """``grid`` whose connected nodes are ``nodes`` (a list taken once): a strategy's sample
    size and its sample come from the same nodes.

    Flower's FedAvg sizes the sample on the nodes connected at one moment (``fraction x
    connected``) and draws it after waiting for ``min_available_nodes``: a site that
    reconnects in between (a SuperNode restarted) makes the sample one smaller than the
    nodes it is drawn from, and a healthy site is left out of the round at random. Every other
    call goes to ``grid``."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        super().__init__(grid)
        self.nodes = list(nodes)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def get_nodes(self) -> Iterable[Any]:
        return [n for n in self.grid.get_nodes() if getattr(n, "node_id", None) in self.nodes]
