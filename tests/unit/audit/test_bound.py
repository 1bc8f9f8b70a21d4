"""The one-run auditing bound (Steinke, Nasr, Jagielski 2023) against independent evaluations:
the paper's Appendix D loop written out here with exact binomial coefficients, an exact
rational tail without delta, Monte Carlo draws of eps-DP randomized response (the mechanism
the bound is tight for), and the closed form when every guess is right."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fedllm.audit import audit, epsilon_lower_bound, guess, guess_counts, p_value
from fedllm.errors import ConfigError


def paper_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Appendix D's ``p_value_DP_audit``, with math.comb in place of scipy.stats.binom."""
    q = 1 / (1 + math.exp(-eps))

    def pmf(k: int) -> float:
        return math.comb(r, k) * q**k * (1 - q) ** (r - k)

    beta = sum(pmf(k) for k in range(v, r + 1))
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += pmf(v - i)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1.0)


def exact_tail(r: int, v: int, eps: float) -> float:
    """P[Binomial(r, e^eps / (1 + e^eps)) >= v] in exact rational arithmetic (delta 0)."""
    q = Fraction(math.exp(eps)) / (1 + Fraction(math.exp(eps)))
    return float(sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(v, r + 1)))


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (100, 20, 15, 0.5, 1e-5),
        (1000, 100, 80, 1.0, 1e-5),
        (1000, 200, 190, 2.0, 1e-3),
        (500, 50, 50, 3.0, 1e-5),
        (50, 10, 3, 0.0, 0.0),
        (2000, 400, 300, 0.8, 1e-6),
    ],
)
def test_p_value_equals_the_papers_loop(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert p_value(m, r, v, eps, delta) == pytest.approx(paper_p_value(m, r, v, eps, delta), 1e-9)


@pytest.mark.parametrize(("r", "v", "eps"), [(30, 20, 0.3), (100, 70, 1.0), (60, 60, 4.0)])
def test_without_delta_the_p_value_is_the_binomial_tail(r: int, v: int, eps: float) -> None:
    assert p_value(10 * r, r, v, eps, 0.0) == pytest.approx(exact_tail(r, v, eps), rel=1e-9)


def test_p_value_matches_monte_carlo_randomized_response() -> None:
    """eps-DP randomized response: each guess right with probability e^eps / (1 + e^eps)."""
    rng = np.random.default_rng(7)
    r, eps = 80, 1.0
    right = rng.random((200_000, r)) < math.exp(eps) / (1 + math.exp(eps))
    counts = right.sum(axis=1)
    for v in (60, 65, 70):
        observed = float((counts >= v).mean())
        assert p_value(1000, r, v, eps, 0.0) == pytest.approx(observed, abs=4e-3)


def test_all_correct_without_delta_is_the_closed_form() -> None:
    """v = r: p-value q^r, so the bound is log(q / (1 - q)) with q = 0.05^(1/r)."""
    for r in (10, 50, 200, 1000):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(r, r, r, 0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def test_all_correct_bound_grows_with_the_canaries() -> None:
    bounds = [epsilon_lower_bound(m, m, m, 1e-5) for m in (10, 100, 1000)]
    assert bounds[0] < bounds[1] < bounds[2]
    assert bounds[0] == pytest.approx(1.05, abs=0.01)  # log(q / (1 - q)), q = 0.05^(1/10)
    assert bounds[2] > 5.5


def test_chance_level_guessing_gives_no_bound() -> None:
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 200, 110, 1e-5) == 0.0  # p = 0.09 at eps 0


def test_the_bound_is_where_the_p_value_crosses_the_level() -> None:
    m, r, v, delta = 1000, 200, 160, 1e-5
    eps = epsilon_lower_bound(m, r, v, delta)
    assert eps > 0
    assert (
        paper_p_value(m, r, v, eps - 1e-6, delta)
        < 0.05
        <= paper_p_value(m, r, v, eps + 1e-6, delta)
    )


def test_the_delta_term_lowers_the_bound() -> None:
    assert epsilon_lower_bound(1000, 500, 500, 1e-3) < epsilon_lower_bound(1000, 500, 500, 0.0)


def test_bound_is_sound_for_randomized_response() -> None:
    """Under a mechanism that is exactly eps-DP (randomized response on each canary), the
    95% bound exceeds eps in at most about 5% of runs."""
    rng = np.random.default_rng(11)
    eps, m, runs = 1.0, 200, 300
    exceeded = 0
    for _ in range(runs):
        included = rng.random(m) < 0.5
        flip = rng.random(m) < 1 / (1 + math.exp(eps))
        reported = included ^ flip  # what the eps-DP mechanism reveals
        scores = reported + rng.random(m) * 0.1  # ties broken at random
        outcome = audit(scores, included, delta=0.0, fractions=(0.5,))
        exceeded += outcome.epsilon > eps
    assert exceeded / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)


def test_guesses_take_the_top_and_bottom_scores() -> None:
    scores = np.array([0.5, 3.0, -1.0, 2.0, 0.0, -2.0])
    assert guess(scores, 2).tolist() == [0, 1, -1, 1, 0, -1]


def test_perfect_scores_give_the_all_correct_bound_at_the_corrected_level() -> None:
    included = np.arange(100) % 2 == 0
    outcome = audit(included.astype(float), included, delta=0.0)
    (steinke,) = outcome.analyses
    counts = guess_counts(100)
    assert steinke.best.per_side == 50 and steinke.best.correct == steinke.best.guesses == 100
    level = 0.05 / len(counts)
    q = level ** (1 / 100)
    assert outcome.epsilon == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert steinke.ceiling == outcome.epsilon
    shuffled = audit(np.random.default_rng(3).random(100), included, delta=0.0)
    assert shuffled.analyses[0].ceiling == steinke.ceiling and shuffled.epsilon < 0.5


def test_bad_counts_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="correct=5, guesses=4"):
        epsilon_lower_bound(10, 4, 5, 1e-5)
    with pytest.raises(ConfigError, match="delta must be in"):
        p_value(10, 4, 2, 1.0, 2.0)
    with pytest.raises(ConfigError, match="one per canary"):
        audit(np.zeros(4), np.zeros(5, dtype=bool), 1e-5)


# Values printed in Steinke, Nasr, Jagielski (2023), arXiv:2305.08846v1. The search tool's copy
# of the paper only returns its opening page, so these were read through two public transcriptions
# of the paper's numbers, each citing the page (0.673 is in both, every other value in one); the
# inputs and the printed digits below are theirs, the bound is ours. Appendix D closes its code
# with a worked example: v = 75 right guesses, 95% confidence.
@pytest.mark.parametrize(
    ("m", "r", "delta", "printed"),
    [
        (100, 100, 0.0, 0.702),  # m = r = 100, delta 0
        (100, 100, 1e-4, 0.699),  # m = r = 100, delta 1e-4
        (1000, 100, 1e-4, 0.673),  # 900 abstentions, delta 1e-4
    ],
)
def test_the_bound_reproduces_the_papers_appendix_d_example(
    m: int, r: int, delta: float, printed: float
) -> None:
    """Steinke et al. 2023, Appendix D (p. 46 of arXiv v1): printed to three decimals."""
    assert epsilon_lower_bound(m, r, 75, delta, confidence=0.95) == pytest.approx(printed, abs=5e-4)


def test_the_p_value_reproduces_the_papers_appendix_d_example() -> None:
    """Steinke et al. 2023, Appendix D: v = 75 of m = r = 100 at eps = log 3, delta 0 has
    p-value 0.553 (at eps = log 3 each guess is right with probability exactly 3/4)."""
    assert p_value(100, 100, 75, math.log(3), 0.0) == pytest.approx(0.553, abs=5e-4)


def test_the_bound_reproduces_the_papers_section_7_value() -> None:
    """Steinke et al. 2023, Section 7 (p. 28 of arXiv v1, with Fig. 11): m = 100000 canaries,
    r = 1510 guesses, v = 1439 right, delta 1e-5, 95%: printed 2.675. Ours is 2.67585, so the
    printed digits are the value cut (not rounded, which gives 2.676) to three decimals, the
    conservative way to print a lower bound; no other reading of the inputs comes near (v =
    1438: 2.665; r = 1511: 2.665; delta 0: 2.806)."""
    eps = epsilon_lower_bound(100_000, 1510, 1439, 1e-5, confidence=0.95)
    assert math.floor(eps * 1000) / 1000 == 2.675
