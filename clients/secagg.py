"""A site's SecAgg+ stages as ClientApp handlers (``train.secagg_setup``,
``train.secagg_share_keys``, ``train.secagg_unmask``) and the masking of its trained update.

Setup, key sharing and unmasking touch no data and load no model: they read and write only the
protocol state in ``context.state``. Training happens in the ordinary ``train`` message, which
also carries the shares addressed to this site; the reply holds the masked vector instead of
the model arrays (the ledger entry for the round is written before, by ``train_round``).

From the second round on the key stages ride on the messages of the round before: the train
reply carries fresh public keys for the next round (its setup), and the unmask request carries
the neighbours' next-round keys, so the unmask answer also holds this site's encrypted shares
for the next round (its key sharing). A steady round is then two messages: train and unmask.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedllm import protocol as proto
from fedllm.errors import SecAggError
from fedllm.secagg import (
    MASK,
    SHARE_KEYS,
    UNMASK,
    Layout,
    SiteSecAgg,
    state_from_config,
    state_to_config,
    weighted_vector,
)


def _state(context: Context, stage: str, server_round: int) -> SiteSecAgg:
    record = context.state.config_records.get(proto.STATE_SECAGG)
    if record is None:
        raise SecAggError(f"secure aggregation: stage {stage!r} before setup")
    state = state_from_config(dict(record))
    state.expect(stage, server_round)
    return state


def _save(context: Context, state: SiteSecAgg) -> None:
    context.state[proto.STATE_SECAGG] = ConfigRecord(state_to_config(state))  # type: ignore[arg-type]


def _request(msg: Message) -> tuple[ConfigRecord, int]:
    record = msg.content.config_records[proto.SECAGG]
    return record, int(cast(int, record[proto.SA_ROUND]))


def _answer(msg: Message, values: dict[str, object]) -> Message:
    record = ConfigRecord(values)  # type: ignore[arg-type]
    return Message(content=RecordDict({proto.SECAGG: record}), reply_to=msg)


def setup(msg: Message, context: Context) -> Message:
    """Stage 0: fresh key pairs and mask seed for this round; reply with the public keys."""
    _, server_round = _request(msg)
    state = SiteSecAgg.setup(msg.metadata.dst_node_id, server_round)
    _save(context, state)
    return _answer(msg, {proto.SA_PK1: state.pk1, proto.SA_PK2: state.pk2})


def share_keys(msg: Message, context: Context) -> Message:
    """Stage 1: encrypted shares of the seed and sk1, one per neighbour."""
    record, server_round = _request(msg)
    state = _state(context, SHARE_KEYS, server_round)
    sent = state.share_keys(
        _peer_keys(record),
        int(cast(int, record[proto.SA_THRESHOLD])),
        int(cast(int, record[proto.SA_NUM_SHARES])),
    )
    _save(context, state)
    return _answer(
        msg, {proto.SA_DESTINATIONS: list(sent), proto.SA_CIPHERTEXTS: list(sent.values())}
    )


def masked_update(
    msg: Message,
    context: Context,
    global_arrays: ArrayRecord,
    update: ArrayRecord,
    metrics: MetricRecord,
    clip_range: float,
    weight: int | None = None,
) -> dict[str, ArrayRecord | ConfigRecord]:
    """Stage 2: the weighted, quantized, masked update (``[n, n * q(update - global)]``), and
    the public keys of a fresh setup for the next round: the records to add to the train
    reply. ``n`` is the site's example count unless ``weight`` is given (1 under client-level
    DP). Records in ``metrics`` the fraction of values clipped to ``clip_range``."""
    record, server_round = _request(msg)
    state = _state(context, MASK, server_round)
    layout = Layout.of(global_arrays)
    delta = layout.flatten(update) - layout.flatten(global_arrays)  # (P,)
    metrics[proto.SECAGG_CLIPPED] = float(np.mean(np.abs(delta) > clip_range))
    n = int(cast(int, metrics[proto.NUM_EXAMPLES])) if weight is None else weight
    vector = weighted_vector(delta, n, clip_range, np.random.default_rng())
    sources = [int(n) for n in cast(list[int], record[proto.SA_SOURCES])]
    ciphertexts = [bytes(c) for c in cast(list[bytes], record[proto.SA_CIPHERTEXTS])]
    masked = state.mask(vector, dict(zip(sources, ciphertexts, strict=True)))
    _save(context, state)
    ahead = SiteSecAgg.setup(state.node_id, server_round + 1)
    context.state[proto.STATE_SECAGG_NEXT] = ConfigRecord(state_to_config(ahead))  # type: ignore[arg-type]
    return {
        proto.SECAGG_MASKED: ArrayRecord({proto.SECAGG_VECTOR: Array(masked)}),
        proto.SECAGG: ConfigRecord(
            {
                proto.SA_NEXT_ROUND: server_round + 1,
                proto.SA_PK1: ahead.pk1,
                proto.SA_PK2: ahead.pk2,
            }
        ),
    }


def unmask(msg: Message, context: Context) -> Message:
    """Stage 3: the shares the server needs to remove the masks of this site's neighbours;
    with ``next-peers`` (the next round's neighbours and their keys), also this site's
    encrypted shares for the next round: that round's key sharing, done ahead."""
    record, server_round = _request(msg)
    state = _state(context, UNMASK, server_round)
    revealed = state.unmask(
        [int(n) for n in cast(list[int], record[proto.SA_ALIVE])],
        [int(n) for n in cast(list[int], record[proto.SA_DROPPED])],
    )
    answer: dict[str, object] = {
        proto.SA_OWNERS: list(revealed),
        proto.SA_SHARES: list(revealed.values()),
    }
    ahead = context.state.config_records.get(proto.STATE_SECAGG_NEXT)
    if ahead is not None:
        del context.state[proto.STATE_SECAGG_NEXT]
    if proto.SA_NEXT + proto.SA_PEERS in record and ahead is not None:
        state = state_from_config(dict(ahead))
        state.expect(SHARE_KEYS, int(cast(int, record[proto.SA_NEXT_ROUND])))
        sent = state.share_keys(
            _peer_keys(record, proto.SA_NEXT),
            int(cast(int, record[proto.SA_NEXT + proto.SA_THRESHOLD])),
            int(cast(int, record[proto.SA_NEXT + proto.SA_NUM_SHARES])),
        )
        answer.update(destinations=list(sent), ciphertexts=list(sent.values()))
    _save(context, state)
    return _answer(msg, answer)


def _peer_keys(record: ConfigRecord, prefix: str = "") -> dict[int, tuple[bytes, bytes]]:
    peers = cast(list[int], record[prefix + proto.SA_PEERS])
    pk1 = cast(list[bytes], record[prefix + proto.SA_PK1])
    pk2 = cast(list[bytes], record[prefix + proto.SA_PK2])
    return {int(n): (bytes(a), bytes(b)) for n, a, b in zip(peers, pk1, pk2, strict=True)}


# The stages around the train message, by ClientApp action (``train.<action>``).
HANDLERS = {
    proto.SECAGG_SETUP: setup,
    proto.SECAGG_SHARE_KEYS: share_keys,
    proto.SECAGG_UNMASK: unmask,
}
