"""Under secure aggregation a site's train reply carries its masked vector and nothing the
server could read its update from: no model arrays, no other array of the update's size.

The real ClientApp handlers (setup, share keys, train with DP) of two simulated sites, driven
with the coordinator's real protocol code; only the transport is function calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients import secagg
from clients.client_app import train
from fedllm import protocol as proto
from fedllm.secagg import Layout, SignedKeys
from fedllm.secagg.coordinator import SecAggRound, SecAggSettings
from fedllm.tasks import get_task
from fedllm.weights import to_arrays
from tests.messages import instruction

NODES = (11, 12)


def _stage(
    node: int, context: Context, action: str, values: dict[str, Any], config: ConfigRecord
) -> ConfigRecord:
    content = RecordDict({proto.SECAGG: ConfigRecord(values), proto.CONFIG: config})
    reply = secagg.HANDLERS[action](instruction(node, content, f"train.{action}"), context)
    return reply.content.config_records[proto.SECAGG]


def test_a_secure_train_reply_holds_only_the_masked_vector(
    defaults: dict[str, Any], config: Any, tmp_path: Path
) -> None:
    run_config = {**defaults, "num-server-rounds": 2, "accountant": "rdp"}
    contexts = {
        n: Context(1, n, {"partition-id": i, "num-partitions": 4}, RecordDict(), run_config)
        for i, n in enumerate(NODES)
    }
    round_config = ConfigRecord({proto.SERVER_ROUND: 1, proto.RUN_DIR: str(tmp_path)})
    shares, threshold = SecAggSettings().for_round(len(NODES))
    server = SecAggRound(1, threshold, shares, list(NODES))
    keys = {
        n: _stage(n, c, proto.SECAGG_SETUP, {proto.SA_ROUND: 1}, round_config)
        for n, c in contexts.items()
    }
    server.receive_public_keys({n: _signed(n, k) for n, k in keys.items()})
    sent = {}
    for n, context in contexts.items():
        peers = list(server.peers_of(n).values())
        answer = _stage(
            n,
            context,
            proto.SECAGG_SHARE_KEYS,
            {
                proto.SA_ROUND: 1,
                proto.SA_PEERS: [p.node_id for p in peers],
                proto.SA_NAME: [p.name for p in peers],
                proto.SA_PK1: [p.pk1 for p in peers],
                proto.SA_PK2: [p.pk2 for p in peers],
                proto.SA_SIGNATURE: [p.signature for p in peers],
                proto.SA_THRESHOLD: threshold,
                proto.SA_NUM_SHARES: shares,
            },
            round_config,
        )
        sent[n] = dict(
            zip(answer[proto.SA_DESTINATIONS], answer[proto.SA_CIPHERTEXTS], strict=True)  # type: ignore[arg-type]
        )
    server.receive_ciphertexts(sent)
    cfg = config(**{"num-server-rounds": 2})
    arrays = to_arrays(get_task(cfg.task).build_model(cfg, (30,)))
    size = Layout.of(arrays).size
    for n, context in contexts.items():
        forward = server.forward[n]
        content = RecordDict(
            {
                proto.ARRAYS: arrays,
                proto.CONFIG: round_config,
                proto.SECAGG: ConfigRecord(
                    {
                        proto.SA_ROUND: 1,
                        proto.SA_SOURCES: list(forward),
                        proto.SA_CIPHERTEXTS: list(forward.values()),
                    }
                ),
            }
        )
        reply: Message = train(instruction(n, content), context)

        assert not reply.has_error()
        assert proto.REFUSAL not in reply.content.config_records
        assert set(reply.content.array_records) == {proto.SECAGG_MASKED}
        masked: ArrayRecord = reply.content.array_records[proto.SECAGG_MASKED]
        assert list(masked) == [proto.SECAGG_VECTOR]
        vector = masked[proto.SECAGG_VECTOR].numpy()
        assert vector.dtype == np.uint64 and vector.shape == (size,)


def _signed(node: int, record: ConfigRecord) -> SignedKeys:
    return SignedKeys(
        node,
        str(record[proto.SA_NAME]),
        bytes(record[proto.SA_PK1]),  # type: ignore[arg-type]
        bytes(record[proto.SA_PK2]),  # type: ignore[arg-type]
        str(record[proto.SA_SIGNATURE]),
    )
