"""A site's side of SecAgg+ (Bell et al. 2020, after Bonawitz et al. 2017), stage by stage.

Per round: (0) setup: fresh key pairs (sk1: masking, sk2: encrypting shares) and a fresh
mask seed; (1) share keys: Shamir-share the seed and sk1 among its neighbours, each share
encrypted for its recipient; (2) mask: ``vector + PRG(seed) +- PRG(pairwise key)`` for each
neighbour whose shares arrived; (3) unmask: reveal, for each neighbour, the seed share if the
neighbour's vector arrived, else its sk1 share, never both. The state between stages is a
plain record kept in the node's ``context.state``. Primitives are Flower's (EC key agreement
with HKDF, authenticated encryption with Fernet, the share envelope) and PyCryptodome's
Shamir sharing over GF(2**128), which Flower's own ``create_shares`` wraps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from fedllm.errors import SecAggError
from fedllm.secagg.vector import prg

SETUP, SHARE_KEYS, MASK, UNMASK = "setup", "share-keys", "mask", "unmask"
# Order of SECP384R1 (the curve of Flower's key pairs), for deriving a scalar from a seed.
_P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)


SECRET_BYTES = 16  # each secret a site shares: one 128-bit Shamir block (GF(2**128))


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """Shamir shares of a 16-byte secret (PyCryptodome, the primitive under Flower's
    ``create_shares``), each as ``index (4 bytes) || share (16 bytes)``. Flower's wrapper pads
    to whole blocks plus one and starts a thread pool per call: 3x the work for 16 bytes."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"a shared secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    return [
        index.to_bytes(4, "little") + share
        for index, share in Shamir.split(threshold, count, secret, ssss=False)
    ]


def combine_secret(shares: list[bytes]) -> bytes:
    """The secret from ``threshold`` shares made by :func:`split_secret`."""
    if any(len(s) != 4 + SECRET_BYTES for s in shares):
        raise SecAggError("a secret share has the wrong length")
    pairs = [(int.from_bytes(s[:4], "little"), s[4:]) for s in shares]
    return bytes(Shamir.combine(pairs, ssss=False))


def masking_key(seed: bytes) -> ec.EllipticCurvePrivateKey:
    """The masking key pair (sk1) derived from a 16-byte seed: HKDF-SHA256 to 512 bits, then
    ``d = k mod (n - 1) + 1`` (FIPS 186-4, B.4.1, "extra random bits"). Shamir-sharing the
    seed instead of the PEM key cuts each share from 13 blocks to 1."""
    okm = HKDF(hashes.SHA256(), 64, salt=None, info=b"fedllm secagg masking key").derive(seed)
    scalar = int.from_bytes(okm, "big") % (_P384_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP384R1())


_NEXT = {SETUP: SHARE_KEYS, SHARE_KEYS: MASK, MASK: UNMASK}


@dataclass
class SiteSecAgg:
    """One site's protocol state for one round (serializable to a Flower ConfigRecord)."""

    node_id: int
    server_round: int
    threshold: int = 0  # set at key sharing
    num_shares: int = 0
    stage: str = SETUP
    sk1: bytes = b""  # the 16-byte seed of the masking key (see masking_key)
    pk1: bytes = b""
    sk2: bytes = b""
    pk2: bytes = b""
    seed: bytes = b""
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # nid -> (pk1, pk2)
    seed_shares: dict[int, bytes] = field(default_factory=dict)  # owner nid -> share of seed
    sk1_shares: dict[int, bytes] = field(default_factory=dict)  # owner nid -> share of sk1
    _sk2: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False, compare=False)

    @classmethod
    def setup(cls, node_id: int, server_round: int) -> SiteSecAgg:
        """Stage 0: fresh keys and seed for ``server_round``; the public keys go to the server
        (in a setup reply, or ahead of time with the previous round's unmask reply)."""
        sk1_seed = os.urandom(SECRET_BYTES)
        sk2, pk2 = generate_key_pairs()
        return cls(
            node_id,
            server_round,
            sk1=sk1_seed,
            pk1=public_key_to_bytes(masking_key(sk1_seed).public_key()),
            sk2=private_key_to_bytes(sk2),
            pk2=public_key_to_bytes(pk2),
            seed=os.urandom(SECRET_BYTES),
        )

    def expect(self, stage: str, server_round: int) -> None:
        """Refuse a stage out of order or for another round (a confused or replaying server)."""
        if server_round != self.server_round or _NEXT.get(self.stage) != stage:
            raise SecAggError(
                f"secure aggregation: got stage {stage!r} of round {server_round}, expected "
                f"{_NEXT.get(self.stage)!r} of round {self.server_round}"
            )
        self.stage = stage

    def share_keys(
        self, peers: dict[int, tuple[bytes, bytes]], threshold: int, num_shares: int
    ) -> dict[int, bytes]:
        """Stage 1: Shamir-share the seed and sk1 among ``peers`` (this site included), any
        ``threshold`` of them enough to rebuild; returns one ciphertext per other peer
        (destination node id -> ciphertext)."""
        if not 2 <= threshold <= num_shares or len(peers) > num_shares:
            raise SecAggError(
                f"the server asked for threshold {threshold} of {num_shares} shares among "
                f"{len(peers)} neighbours; need 2 <= threshold <= shares >= neighbours"
            )
        self.threshold, self.num_shares = threshold, num_shares
        if peers.get(self.node_id) != (self.pk1, self.pk2):
            raise SecAggError("secure aggregation: the server relayed a wrong own public key")
        keys = [k for pair in peers.values() for k in pair]
        if len(set(keys)) != len(keys):
            raise SecAggError("secure aggregation: two neighbours share a public key")
        if len(peers) < self.threshold:
            raise SecAggError(
                f"secure aggregation: {len(peers)} neighbours, below the threshold {self.threshold}"
            )
        self.peers = peers
        seed_shares = split_secret(self.seed, self.threshold, len(peers))
        sk1_shares = split_secret(self.sk1, self.threshold, len(peers))
        out: dict[int, bytes] = {}
        for nid, seed_share, sk1_share in zip(peers, seed_shares, sk1_shares, strict=True):
            if nid == self.node_id:
                self.seed_shares[nid], self.sk1_shares[nid] = seed_share, sk1_share
                continue
            plain = share_keys_plaintext_concat(self.node_id, nid, seed_share, sk1_share)
            out[nid] = encrypt(self._channel(nid), plain)
        return out

    def mask(self, vector: np.ndarray, ciphertexts: dict[int, bytes]) -> np.ndarray:
        """Stage 2: keep the shares addressed to this site, mask ``vector`` (uint64) with its
        own seed and one pairwise mask per neighbour that sent shares."""
        if len(ciphertexts) + 1 < self.threshold:
            raise SecAggError(
                f"secure aggregation: shares from {len(ciphertexts)} neighbours, below the "
                f"threshold {self.threshold}"
            )
        masked: np.ndarray = vector + prg(self.seed, vector.size)  # wraps modulo 2**64
        sk1 = masking_key(self.sk1)
        for src, ciphertext in ciphertexts.items():
            if src not in self.peers or src == self.node_id:
                raise SecAggError(f"secure aggregation: shares from node {src}, not a neighbour")
            owner, dst, seed_share, sk1_share = share_keys_plaintext_separate(
                decrypt(self._channel(src), ciphertext)
            )
            if owner != src or dst != self.node_id:
                raise SecAggError(f"secure aggregation: misaddressed shares from node {src}")
            self.seed_shares[src], self.sk1_shares[src] = seed_share, sk1_share
            pairwise = prg(
                generate_shared_key(sk1, bytes_to_public_key(self.peers[src][0])), vector.size
            )
            if self.node_id > src:
                masked += pairwise
            else:
                masked -= pairwise
        return masked

    def unmask(self, alive: list[int], dropped: list[int]) -> dict[int, bytes]:
        """Stage 3: seed shares of neighbours whose vectors arrived, sk1 shares of those that
        dropped. A node in both lists would let the server unmask one site: refused."""
        if set(alive) & set(dropped):
            raise SecAggError("secure aggregation: a node listed as both alive and dropped")
        if len(alive) < self.threshold:
            raise SecAggError(
                f"secure aggregation: {len(alive)} surviving neighbours, below the threshold "
                f"{self.threshold}"
            )
        out = {nid: self.seed_shares[nid] for nid in alive if nid in self.seed_shares}
        out.update({nid: self.sk1_shares[nid] for nid in dropped if nid in self.sk1_shares})
        return out

    def _channel(self, nid: int) -> bytes:
        if self._sk2 is None:  # parse the PEM key once per stage, not once per neighbour
            self._sk2 = bytes_to_private_key(self.sk2)
        return generate_shared_key(self._sk2, bytes_to_public_key(self.peers[nid][1]))


def state_to_config(state: SiteSecAgg) -> dict[str, object]:
    """Flat values a Flower ConfigRecord holds (ints, strings, bytes and lists of them)."""
    return {
        "node-id": state.node_id,
        "server-round": state.server_round,
        "threshold": state.threshold,
        "num-shares": state.num_shares,
        "stage": state.stage,
        "sk1": state.sk1,
        "pk1": state.pk1,
        "sk2": state.sk2,
        "pk2": state.pk2,
        "seed": state.seed,
        "peers": list(state.peers),
        "peer-pk1": [p[0] for p in state.peers.values()],
        "peer-pk2": [p[1] for p in state.peers.values()],
        "seed-share-of": list(state.seed_shares),
        "seed-shares": list(state.seed_shares.values()),
        "sk1-share-of": list(state.sk1_shares),
        "sk1-shares": list(state.sk1_shares.values()),
    }


def state_from_config(values: dict[str, object]) -> SiteSecAgg:
    def ints(key: str) -> list[int]:
        return [int(v) for v in values.get(key, [])]  # type: ignore[attr-defined]

    def blobs(key: str) -> list[bytes]:
        return [bytes(v) for v in values.get(key, [])]  # type: ignore[attr-defined]

    return SiteSecAgg(
        node_id=int(values["node-id"]),  # type: ignore[call-overload]
        server_round=int(values["server-round"]),  # type: ignore[call-overload]
        threshold=int(values["threshold"]),  # type: ignore[call-overload]
        num_shares=int(values["num-shares"]),  # type: ignore[call-overload]
        stage=str(values["stage"]),
        sk1=bytes(values["sk1"]),  # type: ignore[call-overload]
        pk1=bytes(values["pk1"]),  # type: ignore[call-overload]
        sk2=bytes(values["sk2"]),  # type: ignore[call-overload]
        pk2=bytes(values["pk2"]),  # type: ignore[call-overload]
        seed=bytes(values["seed"]),  # type: ignore[call-overload]
        peers={
            n: (a, b)
            for n, a, b in zip(ints("peers"), blobs("peer-pk1"), blobs("peer-pk2"), strict=True)
        },
        seed_shares=dict(zip(ints("seed-share-of"), blobs("seed-shares"), strict=True)),
        sk1_shares=dict(zip(ints("sk1-share-of"), blobs("sk1-shares"), strict=True)),
    )
