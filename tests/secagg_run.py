"""The SecAgg+ protocol driven in one process: the real site and coordinator code, with the
transport replaced by function calls and chosen sites dropping out at a chosen stage."""

from __future__ import annotations

import numpy as np

from fedllm.secagg.coordinator import SecAggRound, SecAggSettings
from fedllm.secagg.site import MASK, SHARE_KEYS, UNMASK, SiteSecAgg


def secure_sum(
    vectors: dict[int, np.ndarray],
    threshold: int = 0,
    num_shares: int = 0,
    drop_before_masking: frozenset[int] = frozenset(),
    server_round: int = 1,
    seen: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    """The unmasked sum of ``vectors`` (node id -> uint64) of the sites that did not drop.
    ``seen`` receives what the server got from each site (its masked vector)."""
    shares, t = SecAggSettings(num_shares, threshold).for_round(len(vectors))
    server = SecAggRound(server_round, t, shares, sorted(vectors))
    sites = {n: SiteSecAgg.setup(n, server_round) for n in vectors}
    server.receive_public_keys({n: (s.pk1, s.pk2) for n, s in sites.items()})
    sent = {}
    for nid, site in sites.items():
        site.expect(SHARE_KEYS, server_round)
        sent[nid] = site.share_keys(server.peers_of(nid), t, shares)
    server.receive_ciphertexts(sent)
    masked = {}
    for nid, site in sites.items():
        if nid in drop_before_masking:
            continue
        site.expect(MASK, server_round)
        masked[nid] = site.mask(vectors[nid], server.forward[nid])
    if seen is not None:
        seen.update(masked)
    server.receive_masked(masked)
    revealed = {}
    for nid in server.masked:
        sites[nid].expect(UNMASK, server_round)
        revealed[nid] = sites[nid].unmask(*server.unmask_request(nid))
    return server.unmask(revealed)
