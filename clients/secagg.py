"""A site's SecAgg+ stages as ClientApp handlers (``train.secagg_setup``,
``train.secagg_share_keys``, ``train.secagg_unmask``, ``train.secagg_reveal``) and the masking
of its trained update.

The stages touch no data and load no model: they read the site's identity key, its policy and
its roster of trusted sites (:class:`SecAggSite`), and read and write only the protocol state in
``context.state``. Training happens in the ordinary ``train`` message, which also carries the
shares addressed to this site; the reply holds the masked vector instead of the model arrays
(the ledger entry for the round is written before, by ``train_round``).

From the second round on the key stages ride on the messages of the round before: the train
reply carries fresh signed public keys for the next round (its setup), and the unmask request
carries the neighbours' next-round keys, so the unmask answer also holds this site's encrypted
shares for the next round (its key sharing). A steady round is then two messages: train and
unmask; a round in which a site dropped after key sharing adds the reveal message for the
dropped site's neighbours (the survivors' signatures, checked before any of its shares leave).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.site import SiteGuard
from clients.train import SiteRuntime, node_site_name, privacy_request
from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.crypto.signing import SiteKey
from fedllm.errors import PolicyError, SecAggError
from fedllm.privacy import PrivacyRequest, SitePolicy
from fedllm.secagg import (
    MASK,
    REVEAL,
    ROSTER_FILE,
    SHARE_KEYS,
    UNMASK,
    Layout,
    Ring,
    Roster,
    SignedKeys,
    SiteSecAgg,
    publish_public_key,
    state_from_config,
    state_round,
    state_to_config,
    weighted_update,
)
from fedllm.tasks import load_federation


@dataclass(frozen=True)
class SecAggSite:
    """What a site signs with and checks against: its name, identity key, policy, roster."""

    name: str
    key: SiteKey
    policy: SitePolicy
    roster: Roster


Identity = Callable[[Context, ConfigRecord], SecAggSite]


def site_request(cfg: RunConfig) -> PrivacyRequest:
    """The run's privacy request with its secure-aggregation settings (a simulated site's
    policy mirrors them)."""
    return replace(
        privacy_request(cfg), secure_aggregation=cfg.secagg, secagg_threshold=cfg.secagg_threshold
    )


def sites_root(cfg: RunConfig, config: ConfigRecord) -> Path:
    """Simulation: the folder holding every virtual site's own folder."""
    if cfg.ledger_dir:
        return Path(cfg.ledger_dir)
    if proto.RUN_DIR not in config:
        raise PolicyError(
            "a simulated site keeps its policy and ledger in the run folder, and the server's "
            f"message does not name it (`{proto.RUN_DIR}`)"
        )
    return Path(str(config[proto.RUN_DIR])) / "sites"


def site_identity(context: Context, config: ConfigRecord) -> SecAggSite:
    """Deployment: the node-config's `site-key`, `policy-path` and `secagg-roster` (default:
    ``secagg-roster.toml`` beside the policy). Simulation:
    the virtual site's folder (key and policy made on first use, as for training) and the
    federation's sites, each key read from its own folder."""
    node = context.node_config
    folder: Path | None = None  # simulation: the virtual site's own folder
    if proto.NODE_DATA_PATH in node:
        guard = SiteGuard.deployed(context)
        default = Path(str(node[proto.NODE_POLICY_PATH])).parent / ROSTER_FILE
        roster = Roster.load(Path(str(node.get(proto.NODE_SECAGG_ROSTER, default))))
        name = node_site_name(context)
    else:
        site = SiteRuntime.from_context(context)
        root = sites_root(site.cfg, config)
        name = site.data.name
        folder = root / name
        guard = SiteGuard.simulated(folder, site_request(site.cfg))
        roster = Roster.simulated(root, [s.name for s in load_federation(site.cfg).sites])
    key = guard.ledger.key
    if key is None:
        raise SecAggError("secure aggregation: the site has no identity key")
    if folder is not None:
        publish_public_key(folder, key)  # where its peers read it
    return SecAggSite(name, key, guard.policy, roster)


def _state(context: Context, stage: str, server_round: int) -> SiteSecAgg:
    """This round's state, at ``stage``; the train message (MASK) of a round whose keys were
    set up and shared ahead takes that state over."""
    ahead = context.state.config_records.get(proto.STATE_SECAGG_NEXT)
    record: ConfigRecord | None
    if stage == MASK and ahead is not None and state_round(ahead) == server_round:
        record = ahead
        del context.state[proto.STATE_SECAGG_NEXT]
    else:
        record = context.state.config_records.get(proto.STATE_SECAGG)
    if record is None:
        raise SecAggError(f"secure aggregation: stage {stage!r} before setup")
    state = state_from_config(dict(record))
    state.expect(stage, server_round)
    return state


def _save(context: Context, state: SiteSecAgg, key: str = proto.STATE_SECAGG) -> None:
    context.state[key] = ConfigRecord(state_to_config(state))  # type: ignore[arg-type]


def _request(msg: Message) -> tuple[ConfigRecord, int]:
    record = msg.content.config_records[proto.SECAGG]
    return record, int(cast(int, record[proto.SA_ROUND]))


def _config(msg: Message) -> ConfigRecord:
    return msg.content.config_records.get(proto.CONFIG, ConfigRecord())


def _answer(msg: Message, values: dict[str, object]) -> Message:
    record = ConfigRecord(values)  # type: ignore[arg-type]
    return Message(content=RecordDict({proto.SECAGG: record}), reply_to=msg)


def _signed(keys: SignedKeys) -> dict[str, object]:
    return {
        proto.SA_NAME: keys.name,
        proto.SA_PK1: keys.pk1,
        proto.SA_PK2: keys.pk2,
        proto.SA_SIGNATURE: keys.signature,
    }


def setup(msg: Message, context: Context, identity: Identity = site_identity) -> Message:
    """Stage 0: fresh key pairs and mask seed for this round; reply with the signed keys."""
    _, server_round = _request(msg)
    me = identity(context, _config(msg))
    state = SiteSecAgg.setup(
        msg.metadata.dst_node_id, server_round, context.run_id, me.name, me.key
    )
    if proto.STATE_SECAGG_NEXT in context.state:  # keys made ahead are never used now
        del context.state[proto.STATE_SECAGG_NEXT]
    _save(context, state)
    return _answer(msg, _signed(state.signed_keys))


def share_keys(msg: Message, context: Context, identity: Identity = site_identity) -> Message:
    """Stage 1: check the neighbours' signed keys and the threshold; encrypted shares of the
    seed and sk1, one per neighbour."""
    record, server_round = _request(msg)
    me = identity(context, _config(msg))
    state = _state(context, SHARE_KEYS, server_round)
    sent = state.share_keys(
        _peer_keys(record),
        int(cast(int, record[proto.SA_THRESHOLD])),
        int(cast(int, record[proto.SA_NUM_SHARES])),
        me.roster,
        me.policy.min_secagg_threshold,
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
    identity: Identity = site_identity,
) -> dict[str, ArrayRecord | ConfigRecord]:
    """Stage 2: the weighted, quantized, masked update (``[n, n * q(update - global)]`` in
    the round's ring: 2**32 or 2**64), and the signed public keys of a fresh setup for the
    next round: the records to add to the train reply. ``n`` is the site's example count
    unless ``weight`` is given (1 under client-level DP). Records in ``metrics`` the fraction
    of values clipped to ``clip_range``. Refused (SecAggError) when the ring is not one this
    version uses or the site's own entries would not fit it."""
    record, server_round = _request(msg)
    ring = Ring(
        int(cast(int, record.get(proto.SA_RING_BITS, 64))),
        int(cast(int, record.get(proto.SA_LEVEL_BITS, Ring().levels))),
    )
    state = _state(context, MASK, server_round)
    layout = Layout.of(global_arrays)
    n = int(cast(int, metrics[proto.NUM_EXAMPLES])) if weight is None else weight
    # `[n, n * q(update - global)]`, chunk by chunk; the rounding's dither from fresh OS
    # entropy (the server cannot predict it).
    vector, clipped = weighted_update(
        layout, update, global_arrays, n, clip_range, np.random.default_rng(), ring
    )
    metrics[proto.SECAGG_CLIPPED] = clipped
    sources = [int(n) for n in cast(list[int], record[proto.SA_SOURCES])]
    ciphertexts = [bytes(c) for c in cast(list[bytes], record[proto.SA_CIPHERTEXTS])]
    masked = state.mask(vector, dict(zip(sources, ciphertexts, strict=True)), in_place=True)
    _save(context, state)
    me = identity(context, _config(msg))
    ahead = SiteSecAgg.setup(state.node_id, server_round + 1, context.run_id, me.name, me.key)
    _save(context, ahead, proto.STATE_SECAGG_NEXT)
    return {
        proto.SECAGG_MASKED: ArrayRecord({proto.SECAGG_VECTOR: Array(masked)}),
        proto.SECAGG: ConfigRecord(
            {proto.SA_NEXT_ROUND: server_round + 1, **_signed(ahead.signed_keys)}  # type: ignore[dict-item]
        ),
    }


def unmask(msg: Message, context: Context, identity: Identity = site_identity) -> Message:
    """Stage 3: sign the survivor set; with no neighbour dropped, the seed shares the server
    needs. With ``next-peers`` (the next round's neighbours and their signed keys), also this
    site's encrypted shares for the next round: that round's key sharing, done ahead."""
    record, server_round = _request(msg)
    me = identity(context, _config(msg))
    state = _state(context, UNMASK, server_round)
    answer = state.unmask([int(n) for n in cast(list[int], record[proto.SA_SURVIVORS])], me.key)
    _save(context, state)
    values: dict[str, object] = {proto.SA_SIGNATURE: answer.signature}
    if answer.shares is not None:
        values.update(
            {proto.SA_OWNERS: list(answer.shares), proto.SA_SHARES: list(answer.shares.values())}
        )
    ahead = context.state.config_records.get(proto.STATE_SECAGG_NEXT)
    if proto.SA_NEXT + proto.SA_PEERS in record and ahead is not None:
        following = state_from_config(dict(ahead))
        following.expect(SHARE_KEYS, int(cast(int, record[proto.SA_NEXT_ROUND])))
        sent = following.share_keys(
            _peer_keys(record, proto.SA_NEXT),
            int(cast(int, record[proto.SA_NEXT + proto.SA_THRESHOLD])),
            int(cast(int, record[proto.SA_NEXT + proto.SA_NUM_SHARES])),
            me.roster,
            me.policy.min_secagg_threshold,
        )
        _save(context, following, proto.STATE_SECAGG_NEXT)
        values.update(
            {proto.SA_DESTINATIONS: list(sent), proto.SA_CIPHERTEXTS: list(sent.values())}
        )
    return _answer(msg, values)


def reveal(msg: Message, context: Context, identity: Identity = site_identity) -> Message:
    """Stage 4 (a neighbour dropped): the shares, once enough live neighbours have signed the
    survivor set this site signed."""
    record, server_round = _request(msg)
    me = identity(context, _config(msg))
    state = _state(context, REVEAL, server_round)
    signers = [int(n) for n in cast(list[int], record[proto.SA_SIGNERS])]
    signatures = [str(s) for s in cast(list[str], record[proto.SA_SIGNATURES])]
    shares = state.reveal(dict(zip(signers, signatures, strict=True)), me.roster)
    _save(context, state)
    return _answer(msg, {proto.SA_OWNERS: list(shares), proto.SA_SHARES: list(shares.values())})


def _peer_keys(record: ConfigRecord, prefix: str = "") -> dict[int, SignedKeys]:
    columns = zip(
        cast(list[int], record[prefix + proto.SA_PEERS]),
        cast(list[str], record[prefix + proto.SA_NAME]),
        cast(list[bytes], record[prefix + proto.SA_PK1]),
        cast(list[bytes], record[prefix + proto.SA_PK2]),
        cast(list[str], record[prefix + proto.SA_SIGNATURE]),
        strict=True,
    )
    return {
        int(n): SignedKeys(int(n), str(name), bytes(a), bytes(b), str(sig))
        for n, name, a, b, sig in columns
    }


Handler = Callable[[Message, Context], Message]


def handlers(identity: Identity = site_identity) -> dict[str, Handler]:
    """The stages around the train message, by ClientApp action (``train.<action>``)."""
    return {
        proto.SECAGG_SETUP: partial(setup, identity=identity),
        proto.SECAGG_SHARE_KEYS: partial(share_keys, identity=identity),
        proto.SECAGG_UNMASK: partial(unmask, identity=identity),
        proto.SECAGG_REVEAL: partial(reveal, identity=identity),
    }


HANDLERS = handlers()
