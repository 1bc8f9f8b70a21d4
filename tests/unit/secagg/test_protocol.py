"""SecAgg+ in one process: exact sums, dropout tolerance, fail-closed, masks that hide."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest

from fedllm.errors import SecAggError
from fedllm.secagg.coordinator import SecAggRound, SecAggSettings
from fedllm.secagg.site import MASK, SHARE_KEYS, SiteSecAgg, state_from_config, state_to_config
from fedllm.secagg.sizing import DROPOUT_RATE, neighbourhood
from tests.secagg_run import RUN_ID, Identities, secure_sum

SIZE = 1_000


def _vectors(count: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {101 + 7 * i: rng.integers(0, 2**40, SIZE, dtype=np.uint64) for i in range(count)}


def test_the_unmasked_sum_is_exactly_the_sum_of_the_vectors() -> None:
    vectors = _vectors(5)
    total = secure_sum(vectors)
    assert np.array_equal(total, sum(vectors.values()))


def test_one_site_dropping_after_key_sharing_leaves_the_sum_of_the_other_four() -> None:
    vectors = _vectors(5)
    dropped = min(vectors)
    total = secure_sum(vectors, threshold=3, drop_before_masking=frozenset({dropped}))
    assert np.array_equal(total, sum(v for n, v in vectors.items() if n != dropped))


def test_sparse_neighbourhoods_secagg_plus_sum_correctly_with_a_dropout() -> None:
    vectors = _vectors(7)
    dropped = frozenset(sorted(vectors)[2:3])
    total = secure_sum(vectors, threshold=2, num_shares=3, drop_before_masking=dropped)
    assert np.array_equal(total, sum(v for n, v in vectors.items() if n not in dropped))


def test_three_of_five_dropping_fails_closed_below_the_threshold() -> None:
    vectors = _vectors(5)
    with pytest.raises(SecAggError, match="below the reconstruction threshold 3"):
        secure_sum(vectors, threshold=3, drop_before_masking=frozenset(sorted(vectors)[:3]))


def test_masked_vectors_are_uncorrelated_with_the_update_and_fresh_each_round() -> None:
    rng = np.random.default_rng(1)
    update = rng.integers(0, 2**24, SIZE, dtype=np.uint64)
    correlations, first_rounds = [], []
    for trial in range(20):
        seen: dict[int, np.ndarray] = {}
        vectors = {1: update, 2: update.copy(), 3: update.copy()}
        secure_sum(vectors, server_round=trial + 1, seen=seen)
        correlations.append(np.corrcoef(seen[1].astype(np.float64), update)[0, 1])
        first_rounds.append(seen[1])
    # ~N(0, 1/sqrt(SIZE)) each: 20 trials of 1000 values stay well inside 0.15.
    assert max(abs(c) for c in correlations) < 0.15
    assert abs(float(np.mean(correlations))) < 0.05
    # Identical update, two rounds: (almost) no value repeats.
    assert np.mean(first_rounds[0] == first_rounds[1]) < 0.01


@pytest.mark.parametrize(("shares", "threshold", "sampled"), [(0, 1, 5), (0, 6, 5), (3, 4, 9)])
def test_threshold_outside_the_shares_is_refused_by_name(
    shares: int, threshold: int, sampled: int
) -> None:
    with pytest.raises(SecAggError, match="`secagg-threshold`"):
        SecAggSettings(shares, threshold).for_round(sampled)


def test_one_sampled_site_is_never_aggregated_securely() -> None:
    with pytest.raises(SecAggError, match="at least 2 sampled sites"):
        SecAggSettings().for_round(1)


def test_a_site_refuses_stages_out_of_order_and_survives_a_record_round_trip() -> None:
    site = SiteSecAgg.setup(5, 3, RUN_ID, "site-5", Identities.of([5]).keys[5])
    with pytest.raises(SecAggError, match="expected 'share-keys' of round 3"):
        site.expect(MASK, 3)
    with pytest.raises(SecAggError, match="round 4"):
        site.expect(SHARE_KEYS, 4)
    again = state_from_config(state_to_config(site))
    assert again == site


def test_share_channels_are_agreed_once_a_round_and_kept_in_the_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each neighbour's share channel is agreed at key sharing and kept (through the state's
    record round trip) for decrypting that neighbour's shares at masking: masking agrees
    only the pairwise mask keys."""
    import fedllm.secagg.site as site_module

    nodes = [11, 12, 13, 14]
    ids = Identities.of(nodes)
    shares, t = SecAggSettings().for_round(len(nodes))
    server = SecAggRound(1, t, shares, nodes)
    sites = {n: SiteSecAgg.setup(n, 1, RUN_ID, f"site-{n}", ids.keys[n]) for n in nodes}
    server.receive_public_keys({n: s.signed_keys for n, s in sites.items()})
    sent = {}
    for nid, site in sites.items():
        site.expect(SHARE_KEYS, 1)
        sent[nid] = site.share_keys(server.peers_of(nid), t, shares, ids.roster)
        assert sorted(site.channels) == [n for n in nodes if n != nid]
    server.receive_ciphertexts(sent)
    purposes: list[bytes] = []
    real = site_module.agree

    def counted(private: object, public: bytes, purpose: bytes) -> bytes:
        purposes.append(purpose)
        return real(private, public, purpose)  # type: ignore[arg-type]

    monkeypatch.setattr(site_module, "agree", counted)
    for nid in nodes:
        site = state_from_config(state_to_config(sites[nid]))
        assert site.channels == sites[nid].channels
        site.expect(MASK, 1)
        site.mask(np.zeros(SIZE, dtype=np.uint64), server.forward[nid])
    assert purposes == [site_module.PAIRWISE] * (len(nodes) * (len(nodes) - 1))


# ---------------------------------------------------------------- 100 sites (SecAgg+ graph)
def _neighbours_of_one(count: int, chosen: set[int]) -> Callable[[SecAggRound], frozenset[int]]:
    """Drop ``count`` of one site's neighbours (the site itself stays); noted in ``chosen``."""

    def choose(server: SecAggRound) -> frozenset[int]:
        target = min(server.neighbours)
        chosen.update(sorted(server.neighbours[target] - {target})[:count])
        return frozenset(chosen)

    return choose


@pytest.mark.slow
def test_a_hundred_sites_with_dropouts_at_the_tolerated_rate_sum_exactly() -> None:
    vectors = _vectors(100)
    k, t = neighbourhood(100)
    assert (k, t) == (49, 35)  # a ring of 49, not the complete graph of 100
    rng = random.Random(0)
    dropped = frozenset(rng.sample(sorted(vectors), round(DROPOUT_RATE * 100)))
    late = frozenset(rng.sample(sorted(set(vectors) - dropped), 2))  # lost at unmasking
    total = secure_sum(vectors, drop_before_masking=dropped, drop_before_unmask=late)
    assert np.array_equal(total, sum(v for n, v in vectors.items() if n not in dropped))
    # The most one site can lose: k - t of its neighbours at once.
    chosen: set[int] = set()
    total = secure_sum(vectors, choose_dropped=_neighbours_of_one(k - t, chosen))
    assert len(chosen) == k - t
    assert np.array_equal(total, sum(v for n, v in vectors.items() if n not in chosen))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["neighbourhood", "federation"])
def test_a_hundred_sites_above_the_tolerated_dropouts_fail_closed(how: str) -> None:
    vectors = _vectors(100)
    k, t = neighbourhood(100)
    if how == "neighbourhood":  # one more than a site can lose
        kwargs = {"choose_dropped": _neighbours_of_one(k - t + 1, set())}
    else:  # two thirds of the federation
        kwargs = {"drop_before_masking": frozenset(sorted(vectors)[: 2 * len(vectors) // 3])}
    with pytest.raises(SecAggError, match="below the reconstruction threshold 35.*no partial sum"):
        secure_sum(vectors, **kwargs)  # type: ignore[arg-type]


def test_neighbourhoods_grow_logarithmically_and_keep_a_safe_threshold() -> None:
    sizes = {n: neighbourhood(n) for n in (5, 20, 100, 1_000, 10_000, 100_000)}
    assert sizes[5] == (5, 3) and sizes[20] == (20, 11)  # small: every site, a majority
    for n in (100, 1_000, 10_000, 100_000):
        k, t = sizes[n]
        assert k < n and k % 2 == 1
        assert t > k // 2 + 1  # above a majority: no arc of the ring can be cut off alone
    assert sizes[100_000][0] - sizes[1_000][0] <= 14  # +log: 100x the sites, a few more


def test_the_reveal_itself_never_gives_both_kinds_for_a_peer_nor_its_own_masking_key() -> None:
    """Below the stage order (one reveal a round), the reveal keeps its own record: a second
    reveal naming a peer with the other kind, or the site's own masking-key share, is refused."""
    state = SiteSecAgg(node_id=1, server_round=3, threshold=2)
    state.seed_shares = {n: bytes([n]) * 20 for n in (1, 2, 3)}
    state.sk1_shares = {n: bytes([n + 10]) * 20 for n in (1, 2, 3)}
    assert state._reveal([1, 2], [3]) == {
        1: state.seed_shares[1],
        2: state.seed_shares[2],
        3: state.sk1_shares[3],
    }
    with pytest.raises(SecAggError, match="refusing a second kind of share for node 3"):
        state._reveal([3], [])
    with pytest.raises(SecAggError, match="refusing a second kind of share for node 2"):
        state._reveal([], [2])
    fresh = SiteSecAgg(node_id=1, server_round=3, threshold=2)
    fresh.seed_shares, fresh.sk1_shares = dict(state.seed_shares), dict(state.sk1_shares)
    with pytest.raises(SecAggError, match="refusing a second kind of share for node 1"):
        fresh._reveal([2], [1])
