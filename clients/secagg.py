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

from fedllm import metrics as m
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

ROUND = "server-round"


def _state(context: Context, stage: str, server_round: int) -> SiteSecAgg:
    record = context.state.config_records.get(m.STATE_SECAGG)
    if record is None:
        raise SecAggError(f"secure aggregation: stage {stage!r} before setup")
    state = state_from_config(dict(record))
    state.expect(stage, server_round)
    return state


def _save(context: Context, state: SiteSecAgg) -> None:
    context.state[m.STATE_SECAGG] = ConfigRecord(state_to_config(state))  # type: ignore[arg-type]


def _request(msg: Message) -> tuple[ConfigRecord, int]:
    record = msg.content.config_records[m.SECAGG]
    return record, int(cast(int, record[ROUND]))


def _answer(msg: Message, values: dict[str, object]) -> Message:
    record = ConfigRecord(values)  # type: ignore[arg-type]
    return Message(content=RecordDict({m.SECAGG: record}), reply_to=msg)


def setup(msg: Message, context: Context) -> Message:
    """Stage 0: fresh key pairs and mask seed for this round; reply with the public keys."""
    _, server_round = _request(msg)
    state = SiteSecAgg.setup(msg.metadata.dst_node_id, server_round)
    _save(context, state)
    return _answer(msg, {"pk1": state.pk1, "pk2": state.pk2})


def share_keys(msg: Message, context: Context) -> Message:
    """Stage 1: encrypted shares of the seed and sk1, one per neighbour."""
    record, server_round = _request(msg)
    state = _state(context, SHARE_KEYS, server_round)
    sent = state.share_keys(
        _peer_keys(record),
        int(cast(int, record["threshold"])),
        int(cast(int, record["num-shares"])),
    )
    _save(context, state)
    return _answer(msg, {"destinations": list(sent), "ciphertexts": list(sent.values())})


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
    metrics[m.SECAGG_CLIPPED] = float(np.mean(np.abs(delta) > clip_range))
    n = int(cast(int, metrics[m.NUM_EXAMPLES])) if weight is None else weight
    vector = weighted_vector(delta, n, clip_range, np.random.default_rng())
    sources = [int(n) for n in cast(list[int], record["sources"])]
    ciphertexts = [bytes(c) for c in cast(list[bytes], record["ciphertexts"])]
    masked = state.mask(vector, dict(zip(sources, ciphertexts, strict=True)))
    _save(context, state)
    ahead = SiteSecAgg.setup(state.node_id, server_round + 1)
    context.state[m.STATE_SECAGG_NEXT] = ConfigRecord(state_to_config(ahead))  # type: ignore[arg-type]
    return {
        m.SECAGG_MASKED: ArrayRecord({m.SECAGG_VECTOR: Array(masked)}),
        m.SECAGG: ConfigRecord(
            {"next-round": server_round + 1, "pk1": ahead.pk1, "pk2": ahead.pk2}
        ),
    }


def unmask(msg: Message, context: Context) -> Message:
    """Stage 3: the shares the server needs to remove the masks of this site's neighbours;
    with ``next-peers`` (the next round's neighbours and their keys), also this site's
    encrypted shares for the next round: that round's key sharing, done ahead."""
    record, server_round = _request(msg)
    state = _state(context, UNMASK, server_round)
    revealed = state.unmask(
        [int(n) for n in cast(list[int], record["alive"])],
        [int(n) for n in cast(list[int], record["dropped"])],
    )
    answer: dict[str, object] = {"owners": list(revealed), "shares": list(revealed.values())}
    ahead = context.state.config_records.get(m.STATE_SECAGG_NEXT)
    if ahead is not None:
        del context.state[m.STATE_SECAGG_NEXT]
    if "next-peers" in record and ahead is not None:
        state = state_from_config(dict(ahead))
        state.expect(SHARE_KEYS, int(cast(int, record["next-round"])))
        sent = state.share_keys(
            _peer_keys(record, "next-"),
            int(cast(int, record["next-threshold"])),
            int(cast(int, record["next-num-shares"])),
        )
        answer.update(destinations=list(sent), ciphertexts=list(sent.values()))
    _save(context, state)
    return _answer(msg, answer)


def _peer_keys(record: ConfigRecord, prefix: str = "") -> dict[int, tuple[bytes, bytes]]:
    peers = cast(list[int], record[f"{prefix}peers"])
    pk1 = cast(list[bytes], record[f"{prefix}pk1"])
    pk2 = cast(list[bytes], record[f"{prefix}pk2"])
    return {int(n): (bytes(a), bytes(b)) for n, a, b in zip(peers, pk1, pk2, strict=True)}


# The stages around the train message, by ClientApp action (``train.<action>``).
HANDLERS = {"secagg_setup": setup, "secagg_share_keys": share_keys, "secagg_unmask": unmask}
