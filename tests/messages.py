"""Flower messages built outside a running SuperLink: a server's instruction to a node and the
node's reply, as the ServerApp's strategy receives it."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedllm import protocol as proto


def instruction(node_id: int, content: RecordDict, message_type: str = "train") -> Message:
    """A message from the server (node 0 of run 1) to ``node_id``."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    return Message(content=content, dst_node_id=node_id, message_type=message_type)


def reply(node_id: int, content: RecordDict, message_type: str = "train") -> Message:
    """``node_id``'s reply to an instruction of ``message_type``."""
    return Message(content, reply_to=instruction(node_id, RecordDict(), message_type))


def site_content(name: str, examples: int, **records: object) -> RecordDict:
    """A site's train reply: its name, metrics and any further records."""
    content = RecordDict(
        {
            proto.METRICS: MetricRecord({proto.NUM_EXAMPLES: examples, proto.TRAIN_LOSS: 0.5}),
            proto.SITE: ConfigRecord({proto.SITE_NAME: name}),
        }
    )
    for key, record in records.items():
        content[key] = record  # type: ignore[assignment]
    return content
