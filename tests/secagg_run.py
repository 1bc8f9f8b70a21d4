"""The SecAgg+ protocol driven in one process: the real site and coordinator code, with the
transport replaced by function calls, real identity keys and a roster, and chosen sites
dropping out at a chosen stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context

from clients.secagg import Identity, SecAggSite
from fedllm.crypto.signing import SiteKey
from fedllm.privacy import SitePolicy
from fedllm.secagg import REVEAL, Roster, SecAggRound, SecAggSettings
from fedllm.secagg.site import MASK, SHARE_KEYS, UNMASK, SiteSecAgg

RUN_ID = 7


@dataclass(frozen=True)
class Identities:
    """Each node's identity key and a roster holding all of them (what every site trusts)."""

    keys: dict[int, SiteKey]
    roster: Roster

    @classmethod
    def of(cls, nodes: list[int]) -> Identities:
        keys = {n: SiteKey(Ed25519PrivateKey.generate()) for n in nodes}
        return cls(keys, Roster({name(n): k.public for n, k in keys.items()}))


def name(node: int) -> str:
    return f"site-{node}"


def secure_sum(
    vectors: dict[int, np.ndarray],
    threshold: int = 0,
    num_shares: int = 0,
    drop_before_masking: frozenset[int] = frozenset(),
    server_round: int = 1,
    seen: dict[int, np.ndarray] | None = None,
    drop_before_unmask: frozenset[int] = frozenset(),
    choose_dropped: Callable[[SecAggRound], frozenset[int]] | None = None,
) -> np.ndarray:
    """The unmasked sum of ``vectors`` (node id -> uint64) of the sites that did not drop.
    ``seen`` receives what the server got from each site (its masked vector);
    ``choose_dropped`` picks, once the neighbourhoods are drawn, more sites dropping before
    masking."""
    nodes = sorted(vectors)
    ids = Identities.of(nodes)
    shares, t = SecAggSettings(num_shares, threshold).for_round(len(vectors))
    server = SecAggRound(server_round, t, shares, nodes)
    sites = {n: SiteSecAgg.setup(n, server_round, RUN_ID, name(n), ids.keys[n]) for n in nodes}
    server.receive_public_keys({n: s.signed_keys for n, s in sites.items()})
    sent = {}
    for nid, site in sites.items():
        site.expect(SHARE_KEYS, server_round)
        sent[nid] = site.share_keys(server.peers_of(nid), t, shares, ids.roster)
    server.receive_ciphertexts(sent)
    if choose_dropped is not None:
        drop_before_masking = drop_before_masking | choose_dropped(server)
    masked = {}
    for nid, site in sites.items():
        if nid in drop_before_masking:
            continue
        site.expect(MASK, server_round)
        masked[nid] = site.mask(vectors[nid], server.forward[nid])
    if seen is not None:
        seen.update(masked)
    server.receive_masked(masked)
    answers = {}
    for nid in server.survivors:
        if nid in drop_before_unmask:
            continue
        sites[nid].expect(UNMASK, server_round)
        answers[nid] = sites[nid].unmask(server.survivors, ids.keys[nid])
    server.signatures = {n: a.signature for n, a in answers.items()}
    revealed = {n: a.shares for n, a in answers.items() if a.shares is not None}
    for nid in sorted(set(answers) - set(revealed)):
        sites[nid].expect(REVEAL, server_round)
        revealed[nid] = sites[nid].reveal(server.signatures_for(nid), ids.roster)
    return server.unmask(revealed)


def memory_identity(nodes: list[int], min_threshold: int = 2) -> Identity:
    """A ClientApp identity for in-process sites (no folders): each node's key, a shared
    roster of all of them, a policy requiring secure aggregation."""
    ids = Identities.of(nodes)
    policy = SitePolicy(max_epsilon=1.0, delta=1e-5, min_secagg_threshold=min_threshold)

    def identity(context: Context, config: ConfigRecord) -> SecAggSite:
        node = context.node_id
        return SecAggSite(name(node), ids.keys[node], policy, ids.roster)

    return identity
