"""The trade-off families the f-DP analysis tests: chosen from the audited site's ledger, the
scaled-schedule family agreeing with mu-GDP where both hold the mechanism, and sound by Monte
Carlo on an exact Poisson-subsampled Gaussian mechanism (where mu-GDP would not be)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedllm.audit import audit
from fedllm.audit.families import SCALES, GaussianFamily, ScheduleFamily, family_for
from fedllm.audit.fdp import gdp_inverse_blow_up
from fedllm.audit.guesses import FDP
from fedllm.errors import ConfigError
from fedllm.privacy.accountants import get_accountant
from fedllm.privacy.events import DPEvent


def test_the_family_follows_the_ledger() -> None:
    full_batch = [DPEvent(2.0, 1.0, 10), DPEvent(5.0, 1.0, 1)]
    assert isinstance(family_for(full_batch, 1e-5, "pld"), GaussianFamily)
    subsampled = [DPEvent(1.0, 0.01, 300), DPEvent(5.0, 1.0, 1)]
    family = family_for(subsampled, 1e-5, "rdp")
    assert isinstance(family, ScheduleFamily) and family.accountant == "rdp"
    assert family_for([], 1e-5, "pld") is None  # no DP: no ledger
    assert family_for([DPEvent(0.0, 1.0, 10)], 1e-5, "pld") is None  # steps without noise
    with pytest.raises(ConfigError, match="delta must be in"):
        family_for(full_batch, 0.0, "pld")


def test_the_profile_curve_stays_below_the_exact_gaussian_one() -> None:
    """Built from (eps, delta(eps)) pairs of a PLD, the inverse blow-up of one Gaussian release
    is a lower envelope of the exact mu-GDP one (so it rejects less), and close to it."""
    family = ScheduleFamily((DPEvent(0.8, 1.0, 1),), 1e-5, "pld")
    index = int(np.argmin(np.abs(np.asarray(SCALES) - 1.0)))
    scale = SCALES[index]
    curve = family.inverse_blow_up(index)
    exact = gdp_inverse_blow_up(scale / 0.8)
    for y in (1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.999):
        assert curve(y) <= exact(y) + 1e-9
        assert curve(y) >= exact(y) - 0.01 * max(exact(y), 1e-3)


@pytest.mark.parametrize(("m", "r", "v"), [(1000, 100, 100), (1000, 200, 190), (200, 40, 36)])
def test_on_a_full_batch_schedule_both_families_agree(m: int, r: int, v: int) -> None:
    """The scaled schedule of one Gaussian release is mu-GDP: the two bounds differ only by the
    PLD's discretization and the scale grid's rounding down (a few percent, never above)."""
    schedule = ScheduleFamily((DPEvent(2.0, 1.0, 10),), 1e-5, "pld")
    gdp = GaussianFamily(1e-5).lower_bound(m, r, v, 0.04)
    found = schedule.lower_bound(m, r, v, 0.04)
    assert 0.95 * gdp <= found <= gdp * 1.001


def test_the_scaled_schedule_bound_is_sound_on_a_subsampled_gaussian_mechanism() -> None:
    """Each canary sampled in each of 8 steps with probability 0.5 when included, its step's
    score N(sampled, 0.7^2) and the attacker summing the steps' likelihood ratios: the 95%
    headline exceeds the schedule's epsilon (PLD) at most ~5% of the time."""
    rng = np.random.default_rng(7)
    sigma, q, steps, m, runs = 0.7, 0.5, 8, 200, 100
    schedule = (DPEvent(sigma, q, steps),)
    true_eps = get_accountant("pld").epsilon(schedule, 1e-5)
    family = ScheduleFamily(schedule, 1e-5, "pld")
    exceeded, best = 0, 0.0
    for _ in range(runs):
        included = rng.random(m) < 0.5
        sampled = (rng.random((m, steps)) < q) & included[:, None]  # (m, T)
        x = sampled + rng.normal(0.0, sigma, (m, steps))
        scores = np.log(1 - q + q * np.exp((2 * x - 1) / (2 * sigma**2))).sum(axis=1)
        outcome = audit(scores, included, 1e-5, family=family)
        exceeded += outcome.epsilon > true_eps
        best = max(best, next(a for a in outcome.analyses if a.name == FDP).epsilon)
    assert exceeded / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert best > 0.15 * true_eps  # not vacuous
