"""A Flower Grid that delivers messages in process: each node's handler (the ClientApp's
functions) runs with that node's own Context, kept across messages as a SuperNode keeps it
(with the run config and, per node, the node-config given). Chosen nodes can stop answering
from a chosen message type on (a dropout)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

Handler = Callable[[Message, Context], Message]


class LoopbackGrid(Grid):
    def __init__(
        self,
        nodes: list[int],
        handlers: dict[str, Handler],
        run_config: dict[str, Any] | None = None,
        node_configs: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        self.handlers = handlers
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config=dict((node_configs or {}).get(n, {})),
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for n in nodes
        }
        self.dropped: dict[int, str] = {}  # node -> first message type it no longer answers
        self._gone: set[int] = set()
        self.delivered: list[str] = []  # message types, in order

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            self.delivered.append(kind)
            if self.dropped.get(node) == kind:
                self._gone.add(node)
            if node in self._gone:
                replies.append(Message(Error(code=0, reason=f"node {node} dropped"), reply_to=msg))
                continue
            replies.append(self.handlers[kind](msg, self.contexts[node]))
        return replies

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        raise NotImplementedError

    @property
    def run(self) -> object:  # type: ignore[override]
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:  # type: ignore[override]
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError
