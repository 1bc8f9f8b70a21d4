"""The f-DP one-run bound (Mahloujifar, Melis, Chaudhuri 2024) for the mu-GDP family: against a
separate plain-Python transcription of the paper's recursion, against dp_accounting's epsilon
of a Gaussian mechanism, by Monte Carlo on exact Gaussian mechanisms (soundness), and against
Steinke et al.'s bound on ideal scores (power)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from fedllm.audit import audit
from fedllm.audit.bound import epsilon_lower_bound
from fedllm.audit.families import GaussianFamily
from fedllm.audit.fdp import (
    gaussian_family_covers,
    gdp_epsilon,
    gdp_inverse_blow_up,
    gdp_lower_bound,
    gdp_mu_lower_bound,
    rejects,
    schedule_mu,
)
from fedllm.audit.guesses import FDP, STEINKE
from fedllm.errors import ConfigError
from fedllm.privacy.events import DPEvent

NORMAL = NormalDist()


def paper_rejects(mu: float, m: int, c_cap: int, c: int, threshold: float) -> bool:
    """The recursion with abstention written out as lists, every step taken (no early exit),
    with the standard library's normal distribution: h[c], r[c] from the threshold, then
    h[i] = max(h[i+1], g(r[i+1])), r[i] = r[i+1] + i / (c_cap - i) (h[i] - h[i+1]); the
    hypothesis is rejected when r[0] + h[0] exceeds c_cap / m."""

    def g(x: float) -> float:  # Phi(Phi^-1(x) - mu), the mu-GDP inverse blow-up
        if x <= 0.0:
            return 0.0
        if x >= 1.0:
            return 1.0
        return NORMAL.cdf(NORMAL.inv_cdf(x) - mu)

    h = [0.0] * (c + 1)
    r = [0.0] * (c + 1)
    h[c] = threshold * (c_cap - c) / m
    r[c] = threshold * c / m
    for i in range(c - 1, -1, -1):
        h[i] = max(h[i + 1], g(r[i + 1]))
        r[i] = r[i + 1] + i / (c_cap - i) * (h[i] - h[i + 1])
    return r[0] + h[0] > c_cap / m


def paper_mu(m: int, c_cap: int, c: int, threshold: float) -> float:
    """The largest rejected mu on a grid of step 1e-3 (a scan, not a bisection)."""
    mu = 0.0
    while paper_rejects(mu + 1e-3, m, c_cap, c, threshold):
        mu += 1e-3
    return mu


def gdp_delta(mu: float, eps: float) -> float:
    """delta(eps) of mu-GDP with the standard library (Dong, Roth, Su 2022, Cor. 2.13)."""

    def phi(x: float) -> float:  # erfc keeps the tails' digits
        return 0.5 * math.erfc(-x / math.sqrt(2))

    return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)


@pytest.mark.parametrize(
    ("m", "r", "v", "level"),
    [(1000, 100, 100, 0.05), (1000, 200, 190, 0.04), (200, 40, 36, 0.05), (500, 100, 80, 0.01)],
)
def test_the_mu_bound_equals_the_papers_recursion_run_separately(
    m: int, r: int, v: int, level: float
) -> None:
    mu = gdp_mu_lower_bound(m, r, v, level)
    expected = paper_mu(m, r, v, level)
    assert expected > 0.1
    assert expected <= mu < expected + 1e-3 + 1e-9
    assert paper_rejects(mu - 1e-6, m, r, v, level)
    assert not paper_rejects(mu + 1e-6, m, r, v, level)


@pytest.mark.parametrize(("m", "r", "v", "level"), [(1000, 100, 100, 0.05), (300, 60, 50, 0.02)])
def test_rejection_agrees_with_the_papers_recursion_on_a_grid(
    m: int, r: int, v: int, level: float
) -> None:
    for mu in np.linspace(0.0, 3.0, 31):
        assert rejects(gdp_inverse_blow_up(mu), m, r, v, level) == paper_rejects(
            mu, m, r, v, level
        ), mu


def test_chance_level_guessing_rejects_nothing() -> None:
    assert gdp_lower_bound(1000, 200, 100, 1e-5, 0.05) == 0.0
    assert not rejects(gdp_inverse_blow_up(0.0), 1000, 200, 110, 0.05)


@pytest.mark.parametrize(("mu", "delta"), [(0.5, 1e-5), (1.0, 1e-5), (1.68, 1e-5), (3.0, 1e-6)])
def test_gdp_epsilon_solves_the_delta_curve_and_matches_dp_accounting(
    mu: float, delta: float
) -> None:
    from dp_accounting.pld import privacy_loss_distribution as pld

    eps = gdp_epsilon(mu, delta)
    assert gdp_delta(mu, eps) == pytest.approx(delta, rel=1e-6)
    reference = pld.from_gaussian_mechanism(
        standard_deviation=1 / mu, value_discretization_interval=1e-4
    ).get_epsilon_for_delta(delta)
    assert eps <= reference <= eps + 1e-3  # the PLD is pessimistic by its discretization


def test_the_schedule_mu_composes_full_batch_gaussian_releases() -> None:
    events = [DPEvent(2.0, 1.0, 10), DPEvent(4.0, 1.0, 1)]  # DP-SGD steps and a count
    assert schedule_mu(events) == pytest.approx(math.sqrt(10 / 4 + 1 / 16))
    with pytest.raises(ConfigError, match="sample rate 0.1 is not a Gaussian mechanism"):
        schedule_mu([DPEvent(2.0, 0.1, 10)])


def test_the_gaussian_family_covers_only_full_batch_gaussian_releases() -> None:
    assert gaussian_family_covers([DPEvent(2.0, 1.0, 10), DPEvent(4.0, 1.0, 1)])
    assert gaussian_family_covers([DPEvent(2.0, 1.0, 10), DPEvent(0.0, 1.0, 0)])  # statistics
    assert not gaussian_family_covers([DPEvent(2.0, 1.0, 10), DPEvent(2.0, 0.5, 3)])
    assert not gaussian_family_covers([DPEvent(0.0, 1.0, 10)])  # steps without noise
    assert not gaussian_family_covers([])  # no DP: no ledger


def gaussian_scores(rng: np.random.Generator, m: int, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """An exact Gaussian mechanism per canary: score N(mu, 1) if included, N(0, 1) if not."""
    included = rng.random(m) < 0.5
    return rng.normal(mu * included, 1.0), included


def test_the_headline_is_sound_on_an_exact_gaussian_mechanism() -> None:
    """Each canary's score is a mu-GDP release of its inclusion, so the true epsilon is mu-GDP's:
    over many audits the 95% headline (f-DP beside Steinke) exceeds it at most ~5% of the time.
    (Independent scores are far from the analysis's worst case, so a sound recursion is rarely
    near the level here and this catches gross errors, not subtle ones; the transcription
    tests above pin the recursion itself.)"""
    rng = np.random.default_rng(2024)
    mu, delta, m, runs = 2.0, 1e-5, 200, 300
    true_eps = gdp_epsilon(mu, delta)
    exceeded, fdp_best = 0, 0.0
    for _ in range(runs):
        scores, included = gaussian_scores(rng, m, mu)
        outcome = audit(
            scores, included, delta, fractions=(0.05, 0.1, 0.25), family=GaussianFamily(delta)
        )
        exceeded += outcome.epsilon > true_eps
        fdp_best = max(fdp_best, outcome.analyses[1].epsilon)
    assert exceeded / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert fdp_best > 0.4 * true_eps  # not vacuous: the bound reaches a good part of the truth


def test_on_ideal_scores_at_epsilon_8_the_fdp_bound_is_well_above_steinkes() -> None:
    """1000 canaries, scores of a Gaussian mechanism whose mu-GDP epsilon is 8 at 1e-5."""
    mu = 1.0
    while gdp_epsilon(mu, 1e-5) < 8.0:
        mu += 1e-3
    rng = np.random.default_rng(8)
    scores, included = gaussian_scores(rng, 1000, mu)
    outcome = audit(scores, included, 1e-5, family=GaussianFamily(1e-5))
    by_name = {a.name: a for a in outcome.analyses}
    assert outcome.headline.name == FDP
    assert by_name[FDP].epsilon >= 4.0 >= by_name[STEINKE].epsilon + 1.0
    assert outcome.epsilon <= 8.0
    # like for like, all 100 guesses right at level 0.05: the f-DP analysis shows far more
    assert (
        gdp_lower_bound(1000, 100, 100, 1e-5, 0.05) > epsilon_lower_bound(1000, 100, 100, 1e-5) + 2
    )


def test_without_a_family_only_steinke_runs_at_the_full_level() -> None:
    rng = np.random.default_rng(1)
    scores, included = gaussian_scores(rng, 200, 2.0)
    alone = audit(scores, included, 1e-5)
    assert [a.name for a in alone.analyses] == [STEINKE]
    assert alone.analyses[0].level == pytest.approx(0.05)
    both = audit(scores, included, 1e-5, family=GaussianFamily(1e-5))
    assert [a.name for a in both.analyses] == [STEINKE, FDP]
    assert sum(a.level for a in both.analyses) == pytest.approx(0.05)


def test_bad_input_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="mu >= 0"):
        gdp_inverse_blow_up(-1.0)
    with pytest.raises(ConfigError, match="level must be in"):
        rejects(gdp_inverse_blow_up(1.0), 10, 4, 3, 1.5)
    with pytest.raises(ConfigError, match="correct=5, guesses=4"):
        gdp_lower_bound(10, 4, 5, 1e-5, 0.05)
