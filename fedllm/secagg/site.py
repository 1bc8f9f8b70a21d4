"""A site's side of SecAgg+ (Bell et al. 2020, after Bonawitz et al. 2017), stage by stage,
hardened against a server that lies (Bonawitz et al.'s malicious setting).

Per round: (0) setup: fresh X25519 key pairs (sk1: masking, sk2: encrypting shares) and a fresh mask
seed, the public keys signed with the site's identity key; (1) share keys: check every
neighbour's keys against the roster of identity keys the site trusts, check the threshold
(a majority of the neighbours, at least the site policy's minimum), then Shamir-share the seed
and sk1 among the neighbours, each share encrypted for its recipient; (2) mask:
``vector + PRG(seed) +- PRG(pairwise key)`` for each neighbour whose shares arrived;
(3) unmask: given the survivor set, sign it; with no neighbour dropped, reveal the seed shares
of the live neighbours at once; otherwise (4) reveal: only once at least ``threshold``
neighbours have signed the same survivor set, the seed shares of live neighbours and the sk1
shares of dropped ones. Never both kinds for one peer in a round (one reveal a round, by the
stage order), never its own sk1 share (a site answering is alive).

The state between stages is a plain record kept in the node's ``context.state``. Primitives
are ``cryptography``'s (X25519 key agreement with HKDF, Ed25519 signatures), Flower's
(authenticated encryption with Fernet, the share envelope) and PyCryptodome's Shamir sharing
over GF(2**128), which Flower's own ``create_shares`` wraps.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)

from fedllm.crypto.signing import SiteKey
from fedllm.errors import SecAggError
from fedllm.secagg.identity import Roster, SignedKeys, survivors_statement
from fedllm.secagg.shamir import SECRET_BYTES, split_secrets
from fedllm.secagg.sizing import majority
from fedllm.secagg.vector import apply_masks

SETUP, SHARE_KEYS, MASK, UNMASK, REVEAL = "setup", "share-keys", "mask", "unmask", "reveal"
SEED, SK1 = "seed", "sk1"  # the two kinds of share a site can reveal for a peer
PAIRWISE, CHANNEL = b"fedllm secagg pairwise mask", b"fedllm secagg share channel"


def masking_key(seed: bytes) -> X25519PrivateKey:
    """The masking key pair (sk1) derived from a 16-byte seed (HKDF-SHA256 to the 32 bytes
    of an X25519 private key). Shamir-sharing the seed instead of the key keeps each share
    one 128-bit block."""
    okm = HKDF(hashes.SHA256(), 32, salt=None, info=b"fedllm secagg masking key").derive(seed)
    return X25519PrivateKey.from_private_bytes(okm)


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private: X25519PrivateKey, public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key two sites share: HKDF-SHA256 of their X25519 agreement (RFC 7748), bound
    to ``purpose``, as Flower's ``generate_shared_key`` does over P-384 ECDH (X25519 is 7x
    faster here, and a site agrees on two keys with each neighbour a round)."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise SecAggError("secure aggregation: a relayed public key is not an X25519 key") from None
    return HKDF(hashes.SHA256(), 32, salt=None, info=purpose).derive(shared)


_NEXT = {SETUP: SHARE_KEYS, SHARE_KEYS: MASK, MASK: UNMASK, UNMASK: REVEAL}


@dataclass(frozen=True)
class UnmaskAnswer:
    """A site's answer to the unmask request: its signature over the survivor set, and the
    shares it reveals now (None: a neighbour dropped, shares only after the reveal check)."""

    signature: str
    shares: dict[int, bytes] | None


@dataclass
class SiteSecAgg:
    """One site's protocol state for one round (serializable to a Flower ConfigRecord)."""

    node_id: int
    server_round: int
    run_id: int = 0
    name: str = ""
    threshold: int = 0  # set at key sharing
    num_shares: int = 0
    stage: str = SETUP
    sk1: bytes = b""  # the 16-byte seed of the masking key (see masking_key)
    pk1: bytes = b""
    sk2: bytes = b""
    pk2: bytes = b""
    seed: bytes = b""
    signature: str = ""  # the identity signature over this round's keys
    peers: dict[int, SignedKeys] = field(default_factory=dict)
    seed_shares: dict[int, bytes] = field(default_factory=dict)  # owner nid -> share of seed
    sk1_shares: dict[int, bytes] = field(default_factory=dict)  # owner nid -> share of sk1
    survivors: list[int] = field(default_factory=list)  # the survivor set it signed
    revealed: dict[int, str] = field(default_factory=dict)  # peer -> SEED or SK1
    # peer -> the Fernet key of the share channel, agreed once at key sharing and kept for
    # the decryption of that peer's shares at masking (one X25519 agreement, not two)
    channels: dict[int, bytes] = field(default_factory=dict)
    _sk2: X25519PrivateKey | None = field(default=None, repr=False, compare=False)

    @classmethod
    def setup(
        cls, node_id: int, server_round: int, run_id: int, name: str, signer: SiteKey
    ) -> SiteSecAgg:
        """Stage 0: fresh keys and seed for ``server_round``, the public keys signed with the
        site's identity key (they go to the server in a setup reply, or ahead of time with
        the previous round's train reply)."""
        sk1_seed = os.urandom(SECRET_BYTES)
        sk2 = X25519PrivateKey.generate()
        pk1 = public_bytes(masking_key(sk1_seed))
        pk2 = public_bytes(sk2)
        signed = SignedKeys.make(run_id, server_round, node_id, name, pk1, pk2, signer)
        return cls(
            node_id,
            server_round,
            run_id,
            name,
            sk1=sk1_seed,
            pk1=pk1,
            sk2=sk2.private_bytes_raw(),
            pk2=pk2,
            seed=os.urandom(SECRET_BYTES),
            signature=signed.signature,
        )

    @property
    def signed_keys(self) -> SignedKeys:
        return SignedKeys(self.node_id, self.name, self.pk1, self.pk2, self.signature)

    def expect(self, stage: str, server_round: int) -> None:
        """Refuse a stage out of order or for another round (a confused or replaying server)."""
        expected = _NEXT.get(self.stage)
        if server_round != self.server_round or expected != stage:
            raise SecAggError(
                f"secure aggregation: got stage {stage!r} of round {server_round}, "
                + (
                    f"expected {expected!r} of round {self.server_round}"
                    if expected
                    else f"but round {self.server_round} is over at this site (it revealed "
                    "its shares)"
                )
            )
        self.stage = stage

    def share_keys(
        self,
        peers: dict[int, SignedKeys],
        threshold: int,
        num_shares: int,
        roster: Roster,
        min_threshold: int = 2,
    ) -> dict[int, bytes]:
        """Stage 1: check the neighbours' signed keys and the threshold, then Shamir-share
        the seed and sk1 among ``peers`` (this site included), any ``threshold`` of them
        enough to rebuild; returns one ciphertext per other peer (destination -> ciphertext)."""
        count = len(peers)
        if count > num_shares or threshold > count:
            raise SecAggError(
                f"secure aggregation: the server asked for threshold {threshold} of "
                f"{num_shares} shares among {count} neighbours"
            )
        if threshold < majority(count):
            raise SecAggError(
                f"secure aggregation: the server asked for threshold {threshold}, below a "
                f"majority ({majority(count)}) of this site's {count} neighbours: split claims "
                "about who dropped could then unmask a site"
            )
        if threshold < min_threshold:
            raise SecAggError(
                f"secure aggregation: the server asked for threshold {threshold}, below this "
                f"site's policy min-secagg-threshold {min_threshold}"
            )
        if peers.get(self.node_id) != self.signed_keys:
            raise SecAggError("secure aggregation: the server relayed a wrong own public key")
        names = [p.name for p in peers.values()]
        if len(set(names)) != len(names):
            raise SecAggError("secure aggregation: one site appears twice among the neighbours")
        keys = [k for p in peers.values() for k in (p.pk1, p.pk2)]
        if len(set(keys)) != len(keys):
            raise SecAggError("secure aggregation: two neighbours share a public key")
        for nid, signed in peers.items():
            if signed.node_id != nid:
                raise SecAggError(f"secure aggregation: node {nid} relayed with another's keys")
            if nid != self.node_id:
                roster.check_keys(self.run_id, self.server_round, signed)
        self.threshold, self.num_shares = threshold, num_shares
        self.peers = dict(sorted(peers.items()))  # share i+1 goes to the i-th lowest node id
        seed_shares, sk1_shares = split_secrets([self.seed, self.sk1], self.threshold, count)
        out: dict[int, bytes] = {}
        for nid, seed_share, sk1_share in zip(self.peers, seed_shares, sk1_shares, strict=True):
            if nid == self.node_id:
                self.seed_shares[nid], self.sk1_shares[nid] = seed_share, sk1_share
                continue
            plain = share_keys_plaintext_concat(self.node_id, nid, seed_share, sk1_share)
            out[nid] = encrypt(self._channel(nid), plain)
        return out

    def mask(
        self, vector: np.ndarray, ciphertexts: dict[int, bytes], in_place: bool = False
    ) -> np.ndarray:
        """Stage 2: keep the shares addressed to this site, mask ``vector`` (uint32 or uint64:
        the round's ring) with its own seed and one pairwise mask per neighbour that sent
        shares (``in_place``: in ``vector`` itself, else in a copy)."""
        if len(ciphertexts) + 1 < self.threshold:
            raise SecAggError(
                f"secure aggregation: shares from {len(ciphertexts)} neighbours, below the "
                f"threshold {self.threshold}"
            )
        added: list[bytes] = [self.seed]  # the self mask, then pairwise masks by node order
        subtracted: list[bytes] = []
        sk1 = masking_key(self.sk1)
        for src, ciphertext in ciphertexts.items():
            if src not in self.peers or src == self.node_id:
                raise SecAggError(f"secure aggregation: shares from node {src}, not a neighbour")
            try:
                plain = decrypt(self._channel(src), ciphertext)
            except InvalidToken:  # Fernet: not encrypted with that neighbour's signed key
                raise SecAggError(
                    f"secure aggregation: the shares relayed from node {src} were not "
                    "encrypted by that neighbour's signed key"
                ) from None
            owner, dst, seed_share, sk1_share = share_keys_plaintext_separate(plain)
            if owner != src or dst != self.node_id:
                raise SecAggError(f"secure aggregation: misaddressed shares from node {src}")
            self.seed_shares[src], self.sk1_shares[src] = seed_share, sk1_share
            pairwise = agree(sk1, self.peers[src].pk1, PAIRWISE)
            (added if self.node_id > src else subtracted).append(pairwise)
        masked: np.ndarray = vector if in_place else vector.copy()
        apply_masks(masked, added, subtracted)  # wraps modulo the ring (2**32 or 2**64)
        return masked

    def unmask(self, survivors: list[int], signer: SiteKey) -> UnmaskAnswer:
        """Stage 3: sign the survivor set (the sites whose masked vectors the server summed).
        No neighbour dropped: the live neighbours' seed shares now. Else: nothing yet."""
        alive, dropped = self._partition(survivors)
        self.survivors = sorted(set(survivors))
        signature = signer.sign(survivors_statement(self.run_id, self.server_round, self.survivors))
        if dropped:
            return UnmaskAnswer(signature, None)
        self.stage = REVEAL  # revealed: no further reveal this round
        return UnmaskAnswer(signature, self._reveal(alive, []))

    def reveal(self, signatures: dict[int, str], roster: Roster) -> dict[int, bytes]:
        """Stage 4 (rounds with a dropped neighbour): once ``threshold`` neighbours (this
        site included) have signed the survivor set it signed, the seed shares of the live
        neighbours and the sk1 shares of the dropped ones."""
        alive, dropped = self._partition(self.survivors)
        signers = {self.node_id}
        for nid, signature in signatures.items():
            if nid == self.node_id or nid not in alive:
                continue  # only live neighbours' signatures count
            roster.check_survivors(
                self.run_id, self.server_round, self.survivors, self.peers[nid].name, signature
            )
            signers.add(nid)
        if len(signers) < self.threshold:
            raise SecAggError(
                f"secure aggregation: {len(signers)} neighbours signed the survivor set, below "
                f"the threshold {self.threshold}: no share of a dropped site is revealed "
                "before the survivors agree on who dropped"
            )
        return self._reveal(alive, dropped)

    def _partition(self, survivors: list[int]) -> tuple[list[int], list[int]]:
        """(live, dropped) neighbours by the survivor set; refuses a set that drops this
        site or leaves fewer than ``threshold`` live neighbours."""
        given = set(survivors)
        if self.node_id not in given:
            raise SecAggError(
                "secure aggregation: the server lists this site as dropped while asking it to "
                "unmask (a site never reveals its own masking key)"
            )
        held = set(self.seed_shares)  # this site and every neighbour it masked against
        alive = sorted(held & given)
        dropped = sorted(held - given)
        if len(alive) < self.threshold:
            raise SecAggError(
                f"secure aggregation: {len(alive)} surviving neighbours, below the threshold "
                f"{self.threshold}"
            )
        return alive, dropped

    def _reveal(self, alive: list[int], dropped: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for kind, nodes, shares in (
            (SEED, alive, self.seed_shares),
            (SK1, dropped, self.sk1_shares),
        ):
            for nid in nodes:
                if self.revealed.get(nid, kind) != kind or (kind == SK1 and nid == self.node_id):
                    raise SecAggError(
                        f"secure aggregation: refusing a second kind of share for node {nid}"
                    )
                self.revealed[nid] = kind
                out[nid] = shares[nid]
        return out

    def _channel(self, nid: int) -> bytes:
        """The Fernet key (base64) for the shares between this site and ``nid`` (agreed on
        first use, with the neighbour's checked key, then kept in the state)."""
        if nid not in self.channels:
            if self._sk2 is None:
                self._sk2 = X25519PrivateKey.from_private_bytes(self.sk2)
            key = agree(self._sk2, self.peers[nid].pk2, CHANNEL)
            self.channels[nid] = base64.urlsafe_b64encode(key)
        return self.channels[nid]


_ROUND = "server-round"  # in a saved state: the round it belongs to


def state_round(values: Mapping[str, object]) -> int:
    """The round a state saved with :func:`state_to_config` belongs to."""
    value = values[_ROUND]
    if isinstance(value, bool) or not isinstance(value, int):
        raise SecAggError(f"a saved secure-aggregation state has round {value!r}")
    return value


def state_to_config(state: SiteSecAgg) -> dict[str, object]:
    """Flat values a Flower ConfigRecord holds (ints, strings, bytes and lists of them)."""
    peers = list(state.peers.values())
    return {
        "node-id": state.node_id,
        _ROUND: state.server_round,
        "run-id": state.run_id,
        "name": state.name,
        "threshold": state.threshold,
        "num-shares": state.num_shares,
        "stage": state.stage,
        "sk1": state.sk1,
        "pk1": state.pk1,
        "sk2": state.sk2,
        "pk2": state.pk2,
        "seed": state.seed,
        "signature": state.signature,
        "peers": [p.node_id for p in peers],
        "peer-names": [p.name for p in peers],
        "peer-pk1": [p.pk1 for p in peers],
        "peer-pk2": [p.pk2 for p in peers],
        "peer-signatures": [p.signature for p in peers],
        "seed-share-of": list(state.seed_shares),
        "seed-shares": list(state.seed_shares.values()),
        "sk1-share-of": list(state.sk1_shares),
        "sk1-shares": list(state.sk1_shares.values()),
        "survivors": list(state.survivors),
        "revealed-of": list(state.revealed),
        "revealed": list(state.revealed.values()),
        "channel-of": list(state.channels),
        "channels": list(state.channels.values()),
    }


def state_from_config(values: dict[str, object]) -> SiteSecAgg:
    def ints(key: str) -> list[int]:
        return [int(v) for v in values.get(key, [])]  # type: ignore[attr-defined]

    def blobs(key: str) -> list[bytes]:
        return [bytes(v) for v in values.get(key, [])]  # type: ignore[attr-defined]

    def texts(key: str) -> list[str]:
        return [str(v) for v in values.get(key, [])]  # type: ignore[attr-defined]

    peers = [
        SignedKeys(n, name, a, b, sig)
        for n, name, a, b, sig in zip(
            ints("peers"),
            texts("peer-names"),
            blobs("peer-pk1"),
            blobs("peer-pk2"),
            texts("peer-signatures"),
            strict=True,
        )
    ]
    return SiteSecAgg(
        node_id=int(values["node-id"]),  # type: ignore[call-overload]
        server_round=state_round(values),
        run_id=int(values["run-id"]),  # type: ignore[call-overload]
        name=str(values["name"]),
        threshold=int(values["threshold"]),  # type: ignore[call-overload]
        num_shares=int(values["num-shares"]),  # type: ignore[call-overload]
        stage=str(values["stage"]),
        sk1=bytes(values["sk1"]),  # type: ignore[call-overload]
        pk1=bytes(values["pk1"]),  # type: ignore[call-overload]
        sk2=bytes(values["sk2"]),  # type: ignore[call-overload]
        pk2=bytes(values["pk2"]),  # type: ignore[call-overload]
        seed=bytes(values["seed"]),  # type: ignore[call-overload]
        signature=str(values["signature"]),
        peers={p.node_id: p for p in peers},
        seed_shares=dict(zip(ints("seed-share-of"), blobs("seed-shares"), strict=True)),
        sk1_shares=dict(zip(ints("sk1-share-of"), blobs("sk1-shares"), strict=True)),
        survivors=ints("survivors"),
        revealed=dict(zip(ints("revealed-of"), texts("revealed"), strict=True)),
        channels=dict(zip(ints("channel-of"), blobs("channels"), strict=True)),
    )
