"""Averaging over SecAgg+: the server learns only the weighted sum of the sites' updates.

Any strategy's mean can be formed this way (``server/strategies/``: the server rule is then
applied to the unmasked mean). ``configure`` runs the two key stages (setup, share keys) and
returns the train messages, each carrying the encrypted shares addressed to its site; the
sites train, mask their weighted update and reply with the masked vector (Flower's round loop
sends these). ``mean`` takes the masked vectors, runs the unmask stage, and turns the unmasked
sum into the weighted mean of the updates.

From the second round on neither key stage needs a message of its own. Each train reply also
carries the site's public keys for the next round (its setup, done ahead); the unmask request
forwards to each site its next-round neighbours' keys, and the unmask answer carries its
encrypted shares for the next round (key sharing, done ahead). When the next round samples
exactly the sites that shared keys ahead, its train messages go out at once: two messages per
round (train, unmask) against plain FedAvg's one. Otherwise (first round, a changed sample)
the two key stages run as messages of their own. Any stage with fewer live sites than the
threshold fails closed: the round applies nothing and the previous global model stays.

Each train request names the round's ring (:class:`~fedllm.secagg.vector.Ring`): 2**32 when
every site in play reported its weight the round before and their sum times ``2**16`` fits,
else 2**64; after unmasking, a sum whose reported total weight does not fit the ring is
rejected (it may have wrapped).

The server relays each site's signed round keys unchanged and tells every survivor the same
survivor set; the sites check both (``fedllm/secagg/site.py``). When a site dropped after key
sharing, its neighbours answer the unmask request with only their signature over the survivor
set, and a reveal message hands each of them its neighbours' signatures: the shares of the
dropped site leave only once a threshold of neighbours agree on who dropped. Every stage
message carries the round's train config (a simulated site finds its folder from it).
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedllm import protocol as proto
from fedllm.errors import SecAggError
from fedllm.secagg import Layout, Ring, SecAggRound, SecAggSettings, SignedKeys, average_delta
from server.aggregation import AggregateRejected, Averaging, aggregate_train_metrics
from server.replies import reason


class SecureAveraging(Averaging):
    """The weighted mean of the updates through SecAgg+ (Bell et al. 2020)."""

    def __init__(
        self,
        settings: SecAggSettings,
        clip_range: float,
        timeout: float = 3600,
        weight_key: str = proto.NUM_EXAMPLES,
    ) -> None:
        super().__init__(weight_key)
        self.settings = settings
        self.clip_range = clip_range
        self.timeout = timeout
        self._grid: Grid | None = None
        self._protocol: SecAggRound | None = None
        self._size = 0  # values in a masked vector this round
        self._lost: dict[int, str] = {}  # node -> the key stage it did not answer, and why
        self._config = ConfigRecord()  # the round's train config, sent with every stage
        self._vectors: dict[int, np.ndarray] = {}  # masked vectors checked this round
        # The next round's protocol with keys and shares exchanged ahead (see the module doc).
        self._ahead: SecAggRound | None = None
        self._ring = Ring()  # this round's (fedllm.secagg.vector: 2**32 when the bound holds)
        self._weights: dict[int, int] = {}  # node -> the weight it reported last round

    def configure(
        self,
        server_round: int,
        messages: list[Message],
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
    ) -> list[Message]:
        self._grid, self._protocol, self._lost, self._config = grid, None, {}, config
        self._vectors, self._ring = {}, Ring()
        weights, self._weights = self._weights, {}
        ahead, self._ahead = self._ahead, None
        if not messages:
            return messages
        sampled = [msg.metadata.dst_node_id for msg in messages]
        try:
            self._size = Layout.of(arrays).size  # float arrays only, checked before any site works
            shares, threshold = self.settings.for_round(len(messages))
            if (
                ahead is not None
                and ahead.server_round == server_round
                and ahead.keyed == set(sampled)
                and (ahead.num_shares, ahead.threshold) == (shares, threshold)
            ):
                protocol = ahead  # keys set up and shared during the last unmask stage
            else:
                protocol = self._share_keys(server_round, sampled, shares, threshold)
        except SecAggError as err:
            raise AggregateRejected("secure aggregation", str(err)) from None
        self._protocol = protocol
        # The 32-bit ring only when every site in play reported its weight last round: with
        # weights no larger, the sum provably fits (Ring.for_weights); a weight that grew is
        # caught after unmasking (mean: the round fails closed). Else 64 bits.
        known = [weights.get(nid, 0) for nid in sorted(protocol.keyed)]
        self._ring = Ring.for_weights(known) if all(known) else Ring()
        log(
            INFO,
            "secagg: round %d, keys shared by %d sites%s, ring 2**%d with 2**%d levels",
            server_round,
            len(protocol.keyed),
            " (ahead, with the last round's messages)" if protocol is ahead else "",
            self._ring.bits,
            self._ring.levels,
        )
        out = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            if nid not in protocol.keyed:
                continue
            forward = protocol.forward[nid]
            record = ConfigRecord(
                {
                    proto.SA_ROUND: server_round,
                    proto.SA_SOURCES: list(forward),
                    proto.SA_CIPHERTEXTS: list(forward.values()),
                    proto.SA_RING_BITS: self._ring.bits,
                    proto.SA_LEVEL_BITS: self._ring.levels,
                }
            )
            content = RecordDict({proto.ARRAYS: arrays, proto.CONFIG: config, proto.SECAGG: record})
            out.append(
                Message(content=content, dst_node_id=nid, message_type=msg.metadata.message_type)
            )
        return out

    def lost_before_training(self) -> dict[int, str]:
        return dict(self._lost)

    def _share_keys(
        self, server_round: int, sampled: list[int], shares: int, threshold: int
    ) -> SecAggRound:
        """The setup and key-sharing stages as messages of their own."""
        protocol = SecAggRound(server_round, threshold, shares, sampled)
        keys = self._exchange(
            server_round, proto.SECAGG_SETUP, {nid: {} for nid in sampled}, self._lost
        )
        protocol.receive_public_keys({n: _signed(n, r) for n, r in keys.items() if _keyed(r)})
        sent = self._exchange(
            server_round,
            proto.SECAGG_SHARE_KEYS,
            {
                nid: {
                    **_peers(protocol, nid),
                    proto.SA_THRESHOLD: threshold,
                    proto.SA_NUM_SHARES: shares,
                }
                for nid in protocol.public_keys
            },
            self._lost,
        )
        protocol.receive_ciphertexts({n: _ciphertexts(r) for n, r in sent.items()})
        return protocol

    def problem(self, msg: Message, current: ArrayRecord) -> str | None:
        if self._protocol is None or msg.metadata.src_node_id not in self._protocol.keyed:
            return "not part of this round's key sharing"
        vector = _masked_vector(msg, self._size, self._ring)
        if vector is None:
            return f"no masked vector of {self._size} {np.dtype(self._ring.dtype)} values"
        self._vectors[msg.metadata.src_node_id] = vector  # read once: 4 or 8 bytes a value
        return None

    def mean(
        self, server_round: int, replies: list[Message], current: ArrayRecord
    ) -> tuple[ArrayRecord, MetricRecord]:
        protocol, self._protocol = self._protocol, None
        ring = self._ring
        if protocol is None:
            raise AggregateRejected("secure aggregation", "no keys were shared this round")
        valid = {msg.metadata.src_node_id: msg for msg in replies}
        vectors = {
            n: self._vectors[n] if n in self._vectors else _masked_vector(msg, self._size, ring)
            for n, msg in valid.items()
        }
        self._vectors = {}
        try:
            protocol.receive_masked({n: v for n, v in vectors.items() if v is not None})
            ahead = self._ahead_of(server_round + 1, {n: valid[n] for n in protocol.masked})
            survivors = protocol.survivors
            started = time.perf_counter()
            answers = self._exchange(
                server_round,
                proto.SECAGG_UNMASK,
                {
                    nid: {proto.SA_SURVIVORS: survivors, **_ahead_request(ahead, nid)}
                    for nid in survivors
                },
            )
            self._receive_ahead(ahead, answers)
            protocol.signatures = {
                n: str(r[proto.SA_SIGNATURE]) for n, r in answers.items() if proto.SA_SIGNATURE in r
            }
            revealed = {n: _shares(r) for n, r in answers.items() if proto.SA_OWNERS in r}
            waiting = sorted(n for n in answers if n not in revealed and protocol.needs_proof(n))
            timing = {"unmask": time.perf_counter() - started}
            if waiting:  # a neighbour dropped: shares only against the survivors' signatures
                proofs = {nid: protocol.signatures_for(nid) for nid in waiting}
                later = self._exchange(
                    server_round,
                    proto.SECAGG_REVEAL,
                    {
                        nid: {
                            proto.SA_SIGNERS: list(proof),
                            proto.SA_SIGNATURES: list(proof.values()),
                        }
                        for nid, proof in proofs.items()
                    },
                )
                revealed.update({n: _shares(r) for n, r in later.items() if proto.SA_OWNERS in r})
                timing["reveal"] = time.perf_counter() - started - timing["unmask"]
            started = time.perf_counter()
            total = protocol.unmask(revealed)
            timing["unmask compute"] = time.perf_counter() - started
        except SecAggError as err:
            raise AggregateRejected("secure aggregation", str(err)) from None
        summed = [valid[n] for n in sorted(protocol.masked)]
        weights = {
            msg.metadata.src_node_id: int(cast(int, msg.content[proto.METRICS][self.weight_key]))
            for msg in summed
        }
        self._weights = {n: w for n, w in weights.items() if w > 0}  # next round's ring
        try:  # the sum is known now: whatever happens next, the server has seen it
            reported = sum(weights.values())
            if not ring.fits(reported):  # the bound: T * W <= 2**bits - 1, else it may wrap
                raise SecAggError(
                    f"round {server_round}: the sites' weights sum to {reported}, and "
                    f"{reported} x 2**{ring.levels} quantization levels exceeds the 2**"
                    f"{ring.bits} ring: the secure aggregate may have wrapped"
                )
            weight, delta = average_delta(total, self.clip_range, ring)
            if weight != reported:
                raise SecAggError(
                    f"round {server_round}: the secure aggregate's weight {weight} differs from "
                    f"the {reported} (`{self.weight_key}`) the sites reported"
                )
        except SecAggError as err:
            raise AggregateRejected("secure aggregation", str(err), len(summed)) from None
        layout = Layout.of(current)
        arrays = layout.unflatten(layout.flatten(current) + delta)
        log(
            INFO,
            "secagg: round %d, sum of %d sites unmasked (%s)",
            server_round,
            len(summed),
            ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timing.items()),
        )
        return arrays, aggregate_train_metrics([msg.content for msg in summed], self.weight_key)

    def _ahead_of(self, next_round: int, replies: dict[int, Message]) -> SecAggRound | None:
        """The next round's protocol over the sites whose train replies carried public keys
        for it; None (that round sets up with messages of its own) when they cannot make one."""
        keys = {}
        for nid, msg in replies.items():
            record = msg.content.config_records.get(proto.SECAGG)
            if (
                record is not None
                and record.get(proto.SA_NEXT_ROUND) == next_round
                and _keyed(record)
            ):
                keys[nid] = _signed(nid, record)
        try:
            shares, threshold = self.settings.for_round(len(keys))
            ahead = SecAggRound(next_round, threshold, shares, sorted(keys))
            ahead.receive_public_keys(keys)
        except SecAggError:
            return None
        return ahead

    def _receive_ahead(self, ahead: SecAggRound | None, answers: dict[int, ConfigRecord]) -> None:
        """Keep the next round's protocol when every site's shares for it came back."""
        if ahead is None:
            return
        try:
            ahead.receive_ciphertexts(
                {n: _ciphertexts(r) for n, r in answers.items() if proto.SA_DESTINATIONS in r}
            )
        except SecAggError:
            return
        self._ahead = ahead

    def _exchange(
        self,
        server_round: int,
        action: str,
        requests: dict[int, dict[str, Any]],
        lost: dict[int, str] | None = None,
    ) -> dict[int, ConfigRecord]:
        """Send one stage's requests; the protocol records of the sites that answered. Nodes
        that did not answer are logged and, with ``lost``, noted there with the stage."""
        if self._grid is None:
            raise SecAggError("secure aggregation: no grid")
        messages = [
            Message(
                content=RecordDict(
                    {
                        proto.SECAGG: ConfigRecord({proto.SA_ROUND: server_round, **values}),
                        proto.CONFIG: self._config,
                    }
                ),
                dst_node_id=nid,
                message_type=f"train.{action}",
                group_id=str(server_round),
            )
            for nid, values in requests.items()
        ]
        out: dict[int, ConfigRecord] = {}
        missing: dict[int, str] = {}
        for reply in self._grid.send_and_receive(messages, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if reply.has_error() or proto.SECAGG not in reply.content.config_records:
                log(WARNING, "secagg %s: node %d dropped: %s", action, node, _why(reply))
                missing[node] = f"{action}: {_why(reply)}"
                continue
            out[node] = reply.content.config_records[proto.SECAGG]
        for node in set(requests) - set(out):
            missing.setdefault(node, f"no answer to {action} before the round timeout")
        if lost is not None:
            lost.update(missing)
        return out


def _peers(protocol: SecAggRound, nid: int) -> dict[str, Any]:
    """``nid``'s neighbours with their signed keys, as relayed (the server makes none)."""
    peers = list(protocol.peers_of(nid).values())
    return {
        proto.SA_PEERS: [p.node_id for p in peers],
        proto.SA_NAME: [p.name for p in peers],
        proto.SA_PK1: [p.pk1 for p in peers],
        proto.SA_PK2: [p.pk2 for p in peers],
        proto.SA_SIGNATURE: [p.signature for p in peers],
    }


def _signed(nid: int, record: ConfigRecord) -> SignedKeys:
    """A site's signed round keys as it sent them (setup answer, or train answer ahead)."""
    return SignedKeys(
        nid,
        str(record[proto.SA_NAME]),
        _blob(record, proto.SA_PK1),
        _blob(record, proto.SA_PK2),
        str(record[proto.SA_SIGNATURE]),
    )


def _keyed(record: ConfigRecord) -> bool:
    return all(k in record for k in (proto.SA_NAME, proto.SA_PK1, proto.SA_PK2, proto.SA_SIGNATURE))


def _shares(record: ConfigRecord) -> dict[int, bytes]:
    """An unmask or reveal answer: owner node id -> revealed share."""
    return dict(
        zip(
            [int(n) for n in cast(list[int], record[proto.SA_OWNERS])],
            [bytes(c) for c in cast(list[bytes], record[proto.SA_SHARES])],
            strict=True,
        )
    )


def _ahead_request(ahead: SecAggRound | None, nid: int) -> dict[str, Any]:
    """What ``nid`` needs to share its next-round keys with its next-round neighbours."""
    if ahead is None or nid not in ahead.public_keys:
        return {}
    peers = _peers(ahead, nid)
    return {
        proto.SA_NEXT_ROUND: ahead.server_round,
        proto.SA_NEXT + proto.SA_THRESHOLD: ahead.threshold,
        proto.SA_NEXT + proto.SA_NUM_SHARES: ahead.num_shares,
        **{proto.SA_NEXT + key: value for key, value in peers.items()},
    }


def _ciphertexts(record: ConfigRecord) -> dict[int, bytes]:
    """A key-sharing answer: destination node id -> encrypted shares."""
    return dict(
        zip(
            [int(n) for n in cast(list[int], record[proto.SA_DESTINATIONS])],
            [bytes(c) for c in cast(list[bytes], record[proto.SA_CIPHERTEXTS])],
            strict=True,
        )
    )


def _blob(record: ConfigRecord, key: str) -> bytes:
    return bytes(cast(bytes, record[key]))


def _why(reply: Message) -> str:
    return reason(reply) if reply.has_error() else "reply without a protocol record"


def _masked_vector(msg: Message, size: int, ring: Ring) -> np.ndarray | None:
    record = msg.content.array_records.get(proto.SECAGG_MASKED)
    if record is None or proto.SECAGG_VECTOR not in record:
        return None
    vector = record[proto.SECAGG_VECTOR].numpy()
    if vector.dtype != ring.dtype or vector.shape != (size,):
        return None
    return vector
