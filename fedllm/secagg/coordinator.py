"""The server's side of SecAgg+: who neighbours whom, what to forward, and the unmasking.

The coordinator sees signed public keys, encrypted shares, masked vectors and, at the end,
the shares it needs to remove the masks: from them it learns only the sum of the vectors of
the sites that survived the masking stage. Every stage checks that each site still in play
has at least ``threshold`` live neighbours; otherwise it raises :class:`SecAggError` and the
round fails closed (no partial sum is ever released). The sites check everything the server
says (``fedllm/secagg/site.py``): this side holds no secret and is trusted with none.

Unmasking is one pass over the sum: the secrets are rebuilt together
(:func:`~fedllm.secagg.shamir.combine_many`), then every self mask and every pairwise mask of
a dropped site is subtracted in place from the sum in the round's ring (uint32 or uint64:
AES-CTR keystreams, numpy).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from fedllm.errors import SecAggError
from fedllm.secagg.identity import SignedKeys
from fedllm.secagg.shamir import combine_many
from fedllm.secagg.site import PAIRWISE, agree, masking_key
from fedllm.secagg.sizing import majority, neighbourhood
from fedllm.secagg.vector import apply_masks


@dataclass(frozen=True)
class SecAggSettings:
    """Run-config choices: shares per site (0: sized for the federation, see
    :mod:`fedllm.secagg.sizing`) and the reconstruction threshold (0: the sizing's)."""

    num_shares: int = 0
    threshold: int = 0

    def for_round(self, sampled: int) -> tuple[int, int]:
        """(shares, threshold) for ``sampled`` sites, validated; SecAggError names the key."""
        if sampled < 2:
            raise SecAggError(
                f"secure aggregation needs at least 2 sampled sites, got {sampled}: "
                "one site's sum is its update"
            )
        if self.num_shares == 0:
            shares, threshold = neighbourhood(sampled)
        else:
            shares = min(self.num_shares, sampled)
            if shares < sampled and shares % 2 == 0:
                shares += 1  # a ring neighbourhood: itself and shares // 2 on each side
            threshold = majority(shares)
        threshold = self.threshold or threshold
        if not majority(shares) <= threshold <= shares:
            raise SecAggError(
                f"`secagg-threshold` {threshold} must be in {majority(shares)}..{shares} (a "
                f"majority of the {shares} shares per site with {sampled} sampled sites; "
                "sites refuse less)"
            )
        return shares, threshold


@dataclass
class SecAggRound:
    """One round of the protocol at the server, for the sampled node ids."""

    server_round: int
    threshold: int
    num_shares: int
    sampled: list[int]
    neighbours: dict[int, set[int]] = field(default_factory=dict)
    public_keys: dict[int, SignedKeys] = field(default_factory=dict)
    forward: dict[int, dict[int, bytes]] = field(default_factory=dict)  # dst -> src -> ct
    masked: set[int] = field(default_factory=set)  # nodes whose masked vector is in the sum
    keyed: set[int] = field(default_factory=set)  # nodes that shared keys (stage 1)
    signatures: dict[int, str] = field(default_factory=dict)  # survivor-set signatures
    total: np.ndarray | None = None

    def __post_init__(self) -> None:
        order = list(self.sampled)
        random.SystemRandom().shuffle(order)
        half, count = self.num_shares // 2, len(order)
        if self.num_shares >= count:  # the complete graph
            self.neighbours = {nid: set(order) for nid in order}
            return
        self.neighbours = {
            nid: {order[(i + k) % count] for k in range(-half, half + 1)}
            for i, nid in enumerate(order)
        }

    def _require(self, alive: set[int], in_play: set[int], stage: str) -> None:
        short = {n: len(self.neighbours[n] & alive) for n in sorted(in_play)}
        short = {n: c for n, c in short.items() if c < self.threshold}
        if short or len(alive) < self.threshold:
            raise SecAggError(
                f"round {self.server_round}: secure aggregation stopped after {stage}: "
                f"{len(alive)} of {len(self.sampled)} sites left, below the reconstruction "
                f"threshold {self.threshold} (nodes short of live neighbours: {sorted(short)}); "
                "no partial sum is applied"
            )

    # Stage 0 ---------------------------------------------------------------------------
    def receive_public_keys(self, keys: dict[int, SignedKeys]) -> None:
        self.public_keys = {n: k for n, k in keys.items() if n in self.neighbours}
        alive = set(self.public_keys)
        self._require(alive, alive, "setup")

    # Stage 1 ---------------------------------------------------------------------------
    def peers_of(self, nid: int) -> dict[int, SignedKeys]:
        """The signed keys ``nid`` shares its secrets with (its live neighbours, itself
        included)."""
        return {
            n: self.public_keys[n] for n in sorted(self.neighbours[nid]) if n in self.public_keys
        }

    def receive_ciphertexts(self, sent: dict[int, dict[int, bytes]]) -> None:
        self.keyed = set(sent)
        self.forward = {n: {} for n in self.keyed}
        for src, by_dst in sent.items():
            for dst, ciphertext in by_dst.items():
                if dst in self.keyed and dst in self.neighbours[src]:
                    self.forward[dst][src] = ciphertext
        self._require(self.keyed, self.keyed, "key sharing")

    # Stage 2 ---------------------------------------------------------------------------
    def receive_masked(self, vectors: dict[int, np.ndarray]) -> None:
        """Sum the masked vectors (uint32 or uint64, wrapping) of sites that sent one."""
        total: np.ndarray | None = None
        for nid, vector in vectors.items():
            if nid not in self.keyed:
                continue
            if total is None:
                total = vector.copy()
            else:
                total += vector
            self.masked.add(nid)
        self._require(self.masked, self.keyed, "masking")
        self.total = total

    # Stage 3 ---------------------------------------------------------------------------
    @property
    def survivors(self) -> list[int]:
        """The survivor set every site is told (and signs): whose vectors are in the sum."""
        return sorted(self.masked)

    def needs_proof(self, nid: int) -> bool:
        """Whether a neighbour of ``nid`` dropped after key sharing: ``nid`` then reveals
        only after the survivors' signatures (stage 4)."""
        return bool((self.neighbours[nid] & self.keyed) - self.masked)

    def signatures_for(self, nid: int) -> dict[int, str]:
        """The survivor-set signatures of ``nid``'s live neighbours (what it checks)."""
        return {n: s for n, s in self.signatures.items() if n in self.neighbours[nid]}

    def unmask(self, shares: dict[int, dict[int, bytes]]) -> np.ndarray:
        """Remove every mask from the sum: returns ``[sum n, sum n * q]`` (the ring's dtype)."""
        if self.total is None:
            raise SecAggError(f"round {self.server_round}: no masked vector to unmask")
        responders = set(shares) & self.masked
        self._require(responders, self.keyed, "unmasking")
        by_owner: dict[int, list[bytes]] = {n: [] for n in self.keyed}
        for holder, owned in shares.items():
            if holder not in responders:
                continue
            for owner, share in owned.items():
                if owner in self.neighbours[holder] and owner in by_owner:
                    by_owner[owner].append(share)
        try:
            secrets = combine_many(by_owner, self.threshold)
        except (ValueError, SecAggError) as err:
            raise SecAggError(
                f"round {self.server_round}: the revealed shares do not rebuild every "
                f"secret: {err}; no partial sum is applied"
            ) from None
        added: list[bytes] = []
        subtracted: list[bytes] = []
        for owner in sorted(self.keyed):
            if owner in self.masked:
                subtracted.append(secrets[owner])
                continue
            sk1 = masking_key(secrets[owner])  # a dropped site: undo its pairwise masks
            for peer in sorted(self.neighbours[owner] & self.masked):
                pairwise = agree(sk1, self.public_keys[peer].pk1, PAIRWISE)
                if peer > owner:  # the peer added it
                    subtracted.append(pairwise)
                else:
                    added.append(pairwise)
        total = self.total.copy()
        apply_masks(total, added, subtracted)
        return total
