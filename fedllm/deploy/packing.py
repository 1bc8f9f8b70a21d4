"""A message's content as one object on the wire: fewer requests per message in deployment.

Flower 1.42 moves a message between the SuperLink and a SuperNode (and the ServerApp) as a
tree of objects, each its own HTTP request signed with the node key, checked by the SuperLink
and written to or read from its state: the message, its ``RecordDict``, every record, every
array of an ``ArrayRecord`` and its chunk. A train message of the heart-disease federation
with secure aggregation is 9 objects and its reply 8, so a site made 30 requests a round for
44 bytes of model, and the ServerApp as many again; each costs the SuperLink a few milliseconds
of CPU (benchmarks/request_cost.py), and that, not the bytes, was a steady round's time.

:func:`pack` turns a content of several records into one record holding the content as
Flower's own ``RecordDict`` protobuf (:data:`fedllm.protocol.PACKED`), 3 objects a message
(message, ``RecordDict``, the record); :func:`unpack` restores it (protobuf parsing only: no
pickle, nothing executed). The ServerApp packs what it sends in deployment and unpacks the
replies (``server/grid.py``); the ClientApp unpacks a packed message before its handler and
packs the reply of a packed message after the handler has checked it against the release
manifest (``clients/client_app.py``), so both ends are the same pinned app. In simulation
nothing is packed. Content larger than :data:`PACK_LIMIT` is sent as Flower sends it: for
a large model the bytes, not the requests, are the cost, and Flower streams arrays apart.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedllm import protocol as proto
from fedllm.errors import FedLLMError

PACK_LIMIT = 4 * 1024 * 1024  # bytes: larger content goes as Flower's object tree


class PackingError(FedLLMError, ValueError):
    """A packed content that cannot be unpacked."""


def pack(content: RecordDict) -> RecordDict:
    """``content`` as one record, when that means fewer objects and at most
    :data:`PACK_LIMIT` bytes; otherwise ``content`` itself."""
    from flwr.common.serde import recorddict_to_proto

    if proto.PACKED in content:
        raise PackingError(f"a content that has a `{proto.PACKED}` record cannot be packed")
    arrays = [a for r in content.values() if isinstance(r, ArrayRecord) for a in r.values()]
    objects = 1 + len(content) + 2 * len(arrays)  # RecordDict, records, arrays and chunks
    if objects <= 2 or sum(len(a.data) for a in arrays) > PACK_LIMIT:
        return content  # no fewer objects (RecordDict and one record), or large
    data = recorddict_to_proto(content).SerializeToString(deterministic=True)
    if len(data) > PACK_LIMIT:
        return content
    return RecordDict({proto.PACKED: ConfigRecord({proto.PACKED_CONTENT: data})})


def is_packed(content: RecordDict) -> bool:
    return proto.PACKED in content


def unpack(content: RecordDict) -> RecordDict:
    """The content :func:`pack` packed; any other content as it is."""
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto
    from google.protobuf.message import DecodeError

    if not is_packed(content):
        return content
    if len(content) != 1:
        raise PackingError(
            f"a packed content holds only its `{proto.PACKED}` record, got {sorted(content)}"
        )
    record = content[proto.PACKED]
    data = record.get(proto.PACKED_CONTENT) if isinstance(record, ConfigRecord) else None
    if not isinstance(data, bytes) or len(record) != 1:
        raise PackingError(
            f"the `{proto.PACKED}` record must be a ConfigRecord holding only "
            f"`{proto.PACKED_CONTENT}` as bytes"
        )
    message = RecordDictProto()
    try:
        message.ParseFromString(data)
        unpacked = recorddict_from_proto(message)
    except (DecodeError, ValueError, TypeError) as err:
        raise PackingError(f"the packed content is not a valid RecordDict: {err}") from None
    if is_packed(unpacked):
        raise PackingError("a packed content holds another packed content")
    return unpacked
