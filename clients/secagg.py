"""A site's SecAgg+ stages as ClientApp handlers (``train.secagg_setup``,
``train.secagg_share_keys``, ``train.secagg_unmask``) and the masking of its trained update.

Setup, key sharing and unmasking touch no data and load no model: they read and write only the
protocol state in ``context.state``. Training happens in the ordinary ``train`` message, which
also carries the shares addressed to this site; the reply holds the masked vector instead of
the model arrays (the ledger entry for the round is written before, by ``train_round``).
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
    peers = cast(list[int], record["peers"])
    pk1, pk2 = cast(list[bytes], record["pk1"]), cast(list[bytes], record["pk2"])
    sent = state.share_keys(
        {int(n): (bytes(a), bytes(b)) for n, a, b in zip(peers, pk1, pk2, strict=True)},
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
) -> ArrayRecord:
    """Stage 2: the weighted, quantized, masked update (``[n, n * q(update - global)]``);
    ``n`` is the site's example count unless ``weight`` is given (1 under client-level DP).
    Records in ``metrics`` the fraction of values clipped to ``clip_range``."""
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
    return ArrayRecord({m.SECAGG_VECTOR: Array(masked)})


def unmask(msg: Message, context: Context) -> Message:
    """Stage 3: the shares the server needs to remove the masks of this site's neighbours;
    with ``next-round``, also the fresh public keys for that round (its setup, done ahead)."""
    record, server_round = _request(msg)
    state = _state(context, UNMASK, server_round)
    revealed = state.unmask(
        [int(n) for n in cast(list[int], record["alive"])],
        [int(n) for n in cast(list[int], record["dropped"])],
    )
    answer: dict[str, object] = {"owners": list(revealed), "shares": list(revealed.values())}
    if "next-round" in record:  # this round's secrets are spent: set up the next one
        state = SiteSecAgg.setup(state.node_id, int(cast(int, record["next-round"])))
        answer.update(pk1=state.pk1, pk2=state.pk2)
    _save(context, state)
    return _answer(msg, answer)
