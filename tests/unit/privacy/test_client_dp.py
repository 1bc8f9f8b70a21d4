"""Client-level DP math: clipping, the noise split among sites, calibration and accounting,
checked against the exact privacy curve of composed Gaussian mechanisms (Dong et al. 2019:
rounds at multipliers z_i compose to mu-GDP with mu = sqrt(sum 1/z_i^2))."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedllm.errors import PrivacyError
from fedllm.privacy.client_dp import (
    ClientDPAccountant,
    calibrate_client_noise,
    clip_update,
    privatize_update,
    realized_noise_multiplier,
    site_noise_std,
)


def exact_epsilon(multipliers: list[float], delta: float) -> float:
    """Epsilon of composed Gaussian mechanisms (sensitivity 1) at ``delta``, exactly."""
    mu = math.sqrt(sum(1.0 / z**2 for z in multipliers))

    def delta_at(eps: float) -> float:
        return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))

    return float(brentq(lambda e: delta_at(e) - delta, 0.0, 500.0))


def test_clipping_bounds_the_update_norm_and_keeps_small_updates() -> None:
    rng = np.random.default_rng(0)
    big = rng.normal(0, 5.0, 1000)
    clipped = clip_update(big, 1.5)
    assert np.linalg.norm(clipped) == pytest.approx(1.5)
    assert np.allclose(clipped / np.linalg.norm(clipped), big / np.linalg.norm(big))
    small = big * (0.5 / np.linalg.norm(big))
    assert np.array_equal(clip_update(small, 1.5), small)


def test_each_site_adds_its_share_and_the_sum_carries_the_whole_noise() -> None:
    z, clip, sites = 1.3, 0.8, 4
    std = site_noise_std(z, clip, sites)
    assert std == pytest.approx(z * clip / 2)
    rng = np.random.default_rng(1)
    zero = np.zeros(20_000)
    total = sum(privatize_update(zero, clip, std, rng) for _ in range(sites))
    # Sample std of 20k draws is within 2% of the truth with overwhelming probability.
    assert np.std(total) == pytest.approx(z * clip, rel=0.02)
    assert abs(np.mean(total)) < 0.05 * z * clip


@pytest.mark.parametrize(("target", "rounds", "accountant"), [(8.0, 10, "rdp"), (2.0, 5, "prv")])
def test_calibrated_noise_meets_the_target_by_the_accountant_and_the_exact_curve(
    target: float, rounds: int, accountant: str
) -> None:
    z = calibrate_client_noise(target, 1e-3, rounds, accountant)
    acct = ClientDPAccountant(z, 1.0, 1e-3, target, accountant)
    for _ in range(rounds):
        acct.record(summed=4, sampled=4)
    assert 0.95 * target <= acct.epsilon <= target
    # The exact curve is below any valid accountant's bound (PRV is tight, RDP looser).
    assert exact_epsilon([z] * rounds, 1e-3) <= acct.epsilon * 1.01


def test_epsilon_grows_every_round_and_a_dropout_round_costs_more() -> None:
    z = calibrate_client_noise(4.0, 1e-3, 4, "rdp")
    full, short = (ClientDPAccountant(z, 1.0, 1e-3, 4.0, "rdp") for _ in range(2))
    seen = []
    for _ in range(3):
        full.record(4, 4)
        seen.append(full.epsilon)
    assert seen[0] < seen[1] < seen[2]
    short.record(4, 4)
    short.record(4, 4)
    assert short.record(2, 4) == pytest.approx(z * math.sqrt(0.5))  # half the noise variance
    assert short.epsilon > full.epsilon
    # The exact curve agrees on the order and the accountant bounds it.
    assert exact_epsilon([z, z, z / math.sqrt(2)], 1e-3) <= short.epsilon
    assert exact_epsilon([z, z, z / math.sqrt(2)], 1e-3) > exact_epsilon([z] * 3, 1e-3)


def test_the_next_full_round_is_refused_once_dropouts_spent_the_slack() -> None:
    z = calibrate_client_noise(3.0, 1e-3, 2, "rdp")
    acct = ClientDPAccountant(z, 1.0, 1e-3, 3.0, "rdp")
    assert acct.epsilon_after_full_round() <= 3.0
    acct.record(2, 4)
    assert acct.epsilon_after_full_round() > 3.0


def test_bad_site_counts_are_refused() -> None:
    with pytest.raises(PrivacyError, match="at least one sampled site"):
        site_noise_std(1.0, 1.0, 0)
    with pytest.raises(PrivacyError, match=r"summed sites \(5\) must be in 1..4"):
        realized_noise_multiplier(1.0, 5, 4)
