"""The f-DP one-run bound (Mahloujifar, Melis, Chaudhuri, "Auditing f-Differential Privacy in
One Run", arXiv:2410.22235, ICML 2025) for the Gaussian family (mu-GDP, Dong, Roth, Su 2022).

The game is Steinke et al.'s (:mod:`fedllm.audit.bound`): ``m`` canaries each included with
probability 1/2, the attacker guesses ``r`` of them and gets ``v`` right. Instead of testing
(epsilon, delta)-DP, the paper tests a trade-off curve ``f``: if the mechanism is f-DP with
respect to each canary's inclusion, the probability ``tau`` of ``v`` or more right guesses is
bounded through two sequences, from ``i = v`` down to 0 (the paper's numerical bound for
guesses with abstention, alphabet size k = 2; its appendix routine ``audit_rh_with_cap``):

    r_v = tau v / m,  h_v = tau (r - v) / m
    h_i = max(h_{i+1}, g(r_{i+1})),   r_i = r_{i+1} + i / (r - i) * (h_i - h_{i+1})

and ``tau`` is impossible where ``r_0 + h_0 > r / m``. ``g`` is the inverse blow-up of ``f``:
the least probability one neighbour can give an event the other gives probability ``x`` (for
mu-GDP ``g(x) = Phi(Phi^-1(x) - mu)``, convex and increasing). In words, ``r_i`` and ``h_i``
are the (per-canary averaged) probabilities of a right, resp. wrong, guess together with at
least ``i`` right ones: flipping one canary's inclusion turns "its guess right and >= i + 1
right" into "its guess wrong and >= i right", which f-DP and the convexity of ``g`` turn into
the ``h`` step; among outcomes with exactly ``i`` right there are ``i`` right and ``r - i``
wrong guesses, the ``r`` step; and every outcome has ``r`` guesses, so ``r_0 + h_0 <= r / m``.
No number the paper prints is checked here: the search tool's copy of the paper returns only
its opening, and no public transcription of its tables or figures was found, so neither a printed
value nor the algorithm's or theorem's number is confirmed (one public re-implementation calls
the routine the paper's Algorithm 3; unverified). The recursion was checked against two public
implementations of it that agree (Meta's PrivacyGuard ``FDPAnalysisNode.audit_rh_with_cap``
and the one in Google DeepMind's ``dp_accounting`` auditing library), each step re-derived as
above, and the bound tested by Monte Carlo on exact Gaussian mechanisms
(``tests/unit/audit/test_fdp.py``).

Testing at level ``tau``: the hypothesis "the mechanism is mu-GDP" is rejected when the
recursion started at ``tau`` overflows. Rejection is monotone in mu (a larger mu makes ``g``
smaller), so the rejected hypotheses are an interval ``[0, mu*)`` and the lower bound is the
epsilon of ``mu*``-GDP at the run's delta. That conversion is exact, hence the bound sound, only
when the mechanism really is a Gaussian mechanism in each canary: every release of the audited
site Gaussian without subsampling (sample rate 1; compositions of Gaussians compose as
``mu = sqrt(sum mu_i^2)``, Dong et al. Cor. 3.3). Under Poisson subsampling the privacy curve
is not Gaussian and rejecting a mu-GDP curve says nothing about epsilon at delta, so
:func:`gaussian_family_covers` refuses it there and :mod:`fedllm.audit.families` tests the
site's own scaled schedule instead (the same :func:`rejects`, another inverse blow-up).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from scipy.special import log_ndtr, ndtr, ndtri

from fedllm.audit.bound import check_counts, check_delta
from fedllm.errors import ConfigError
from fedllm.privacy.events import DPEvent

InverseBlowUp = Callable[[float], float]
BISECTION_STEPS = 40
MU_CEILING = 64.0  # mu-GDP at mu 64: epsilon ~ 2000 at delta 1e-5; no audit gets near it


def gdp_inverse_blow_up(mu: float) -> InverseBlowUp:
    """``x -> Phi(Phi^-1(x) - mu)``: the least probability under one neighbour of an event of
    probability ``x`` under the other, for a mu-GDP mechanism (1 - the trade-off's inverse)."""
    if mu < 0 or math.isnan(mu):
        raise ConfigError(f"a mu-GDP hypothesis needs mu >= 0, got {mu}")

    def inverse(x: float) -> float:
        if x <= 0.0:
            return 0.0
        if x >= 1.0:
            return 1.0
        return float(ndtr(ndtri(x) - mu))

    return inverse


def rejects(inverse_blow_up: InverseBlowUp, m: int, r: int, v: int, level: float) -> bool:
    """Whether ``v`` right guesses out of ``r`` (of ``m`` canaries) has probability below
    ``level`` under the trade-off curve whose inverse blow-up is given: the recursion of the
    module docstring, started at ``tau = level``, overflows ``r / m``."""
    check_counts(m, r, v)
    if not 0.0 < level < 1.0:
        raise ConfigError(f"audit level must be in (0, 1), got {level}")
    if r == 0:
        return False
    right = level * v / m  # r_v
    wrong = level * (r - v) / m  # h_v
    total = r / m
    for i in range(v - 1, -1, -1):
        forced = max(wrong, inverse_blow_up(right))  # h_i
        if forced == wrong:
            break  # neither sequence moves again: every later step is the same
        right += i / (r - i) * (forced - wrong)  # r_i
        wrong = forced
        if right + wrong > total:
            return True  # both sequences only grow as i falls
    return right + wrong > total


def gdp_epsilon(mu: float, delta: float) -> float:
    """Epsilon of mu-GDP at ``delta``: the root of ``delta(eps) = Phi(-eps/mu + mu/2) -
    e^eps Phi(-eps/mu - mu/2)`` (Dong, Roth, Su 2022, Cor. 2.13), 0 where ``delta`` is
    reached at epsilon 0."""
    check_delta(delta)
    if mu < 0 or math.isnan(mu):
        raise ConfigError(f"a mu-GDP curve needs mu >= 0, got {mu}")
    if mu == 0.0 or delta >= 1.0:
        return 0.0
    if delta == 0.0:
        return math.inf

    def excess(eps: float) -> float:  # delta(eps) - delta, decreasing in eps
        first = float(ndtr(-eps / mu + mu / 2))
        second = math.exp(eps + float(log_ndtr(-eps / mu - mu / 2)))
        return first - second - delta

    if excess(0.0) <= 0.0:
        return 0.0
    low, high = 0.0, 1.0
    while excess(high) > 0.0:
        low, high = high, 2 * high
    for _ in range(60):
        middle = (low + high) / 2
        if excess(middle) > 0.0:
            low = middle
        else:
            high = middle
    return high  # the side where delta(eps) <= delta: an epsilon the curve attains


def gdp_mu_lower_bound(m: int, r: int, v: int, level: float) -> float:
    """The largest mu whose mu-GDP hypothesis the counts reject at ``level`` (bisection on
    the monotone rejection): with confidence ``1 - level`` the mechanism is not mu-GDP for
    any mu below it. 0 when even mu = 0 (perfect privacy) is not rejected."""
    check_counts(m, r, v)
    if not rejects(gdp_inverse_blow_up(0.0), m, r, v, level):
        return 0.0
    low, high = 0.0, 1.0  # rejects(low), not rejects(high)
    while rejects(gdp_inverse_blow_up(high), m, r, v, level):
        low, high = high, 2 * high
        if high > MU_CEILING:
            raise ConfigError(f"f-DP audit bound diverges for m={m}, r={r}, v={v}")
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if rejects(gdp_inverse_blow_up(middle), m, r, v, level):
            low = middle
        else:
            high = middle
    return low


def gdp_lower_bound(m: int, r: int, v: int, delta: float, level: float) -> float:
    """The epsilon at ``delta`` of the strongest mu-GDP hypothesis rejected at ``level``."""
    check_delta(delta)
    return gdp_epsilon(gdp_mu_lower_bound(m, r, v, level), delta)


def schedule_mu(events: Iterable[DPEvent]) -> float:
    """mu of a composition of full-batch Gaussian releases: ``sqrt(sum steps / sigma^2)``."""
    total = 0.0
    for event in events:
        if event.sample_rate != 1.0:
            raise ConfigError(
                f"a release at sample rate {event.sample_rate} is not a Gaussian mechanism "
                "(subsampled): it has no mu"
            )
        total += event.steps / event.noise_multiplier**2
    return math.sqrt(total)


def gaussian_family_covers(events: Iterable[DPEvent]) -> bool:
    """Whether the mu-GDP family holds the audited site's mechanism exactly: at least one
    private release and every one a Gaussian mechanism without subsampling (sample rate 1)."""
    releases = [e for e in events if e.steps > 0]
    return bool(releases) and all(e.noise_multiplier > 0 and e.sample_rate == 1.0 for e in releases)
