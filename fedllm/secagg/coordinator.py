"""The server's side of SecAgg+: who neighbours whom, what to forward, and the unmasking.

The coordinator sees public keys, encrypted shares, masked vectors and, at the end, the
shares it needs to remove the masks: from them it learns only the sum of the vectors of the
sites that survived the masking stage. Every stage checks that each site still in play has at
least ``threshold`` live neighbours; otherwise it raises :class:`SecAggError` and the round
fails closed (no partial sum is ever released).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import bytes_to_public_key

from fedllm.errors import SecAggError
from fedllm.secagg.site import combine_secret, masking_key
from fedllm.secagg.vector import prg


@dataclass(frozen=True)
class SecAggSettings:
    """Run-config choices: shares per site (0: every sampled site) and the reconstruction
    threshold (0: a majority of the shares)."""

    num_shares: int = 0
    threshold: int = 0

    def for_round(self, sampled: int) -> tuple[int, int]:
        """(shares, threshold) for ``sampled`` sites, validated; SecAggError names the key."""
        if sampled < 2:
            raise SecAggError(
                f"secure aggregation needs at least 2 sampled sites, got {sampled}: "
                "one site's sum is its update"
            )
        shares = sampled if self.num_shares == 0 else min(self.num_shares, sampled)
        if shares < sampled and shares % 2 == 0:
            shares += 1  # a ring neighbourhood: itself and shares // 2 on each side
        threshold = self.threshold or shares // 2 + 1
        if not 2 <= threshold <= shares:
            raise SecAggError(
                f"`secagg-threshold` {threshold} must be in 2..{shares} (the shares per site "
                f"with {sampled} sampled sites)"
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
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    forward: dict[int, dict[int, bytes]] = field(default_factory=dict)  # dst -> src -> ct
    masked: set[int] = field(default_factory=set)  # nodes whose masked vector is in the sum
    keyed: set[int] = field(default_factory=set)  # nodes that shared keys (stage 1)
    total: np.ndarray | None = None

    def __post_init__(self) -> None:
        order = list(self.sampled)
        random.SystemRandom().shuffle(order)
        half, count = self.num_shares // 2, len(order)
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
    def receive_public_keys(self, keys: dict[int, tuple[bytes, bytes]]) -> None:
        self.public_keys = {n: k for n, k in keys.items() if n in self.neighbours}
        alive = set(self.public_keys)
        self._require(alive, alive, "setup")

    # Stage 1 ---------------------------------------------------------------------------
    def peers_of(self, nid: int) -> dict[int, tuple[bytes, bytes]]:
        """The public keys ``nid`` shares its secrets with (its live neighbours, itself
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
        """Sum the masked vectors (uint64, wrapping) of sites that sent one."""
        total: np.ndarray | None = None
        for nid, vector in vectors.items():
            if nid not in self.keyed:
                continue
            total = vector.copy() if total is None else total + vector
            self.masked.add(nid)
        self._require(self.masked, self.keyed, "masking")
        self.total = total

    # Stage 3 ---------------------------------------------------------------------------
    def unmask_request(self, nid: int) -> tuple[list[int], list[int]]:
        """Whose seed shares (alive) and whose sk1 shares (dropped) ``nid`` should reveal."""
        near = self.neighbours[nid] & self.keyed
        return sorted(near & self.masked), sorted(near - self.masked)

    def unmask(self, shares: dict[int, dict[int, bytes]]) -> np.ndarray:
        """Remove every mask from the sum: returns ``[sum n, sum n * q]`` (uint64)."""
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
        total, size = self.total.copy(), self.total.size
        for owner in sorted(self.keyed):
            got = by_owner[owner]
            if len(got) < self.threshold:
                raise SecAggError(
                    f"round {self.server_round}: {len(got)} shares of node {owner}'s secret, "
                    f"below the threshold {self.threshold}; no partial sum is applied"
                )
            try:
                secret = combine_secret(got[: self.threshold])
            except (ValueError, SecAggError) as err:
                raise SecAggError(f"shares of node {owner}'s secret do not combine") from err
            if owner in self.masked:
                total -= prg(secret, size)
                continue
            sk1 = masking_key(secret)  # a dropped site: undo its pairwise masks
            for peer in self.neighbours[owner] & self.masked:
                pairwise = prg(
                    generate_shared_key(sk1, bytes_to_public_key(self.public_keys[peer][0])), size
                )
                if peer > owner:  # the peer added it
                    total -= pairwise
                else:
                    total += pairwise
        return total
