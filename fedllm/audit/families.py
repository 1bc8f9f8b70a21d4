"""The hypotheses the f-DP analysis tests: a family of trade-off curves that holds the audited
site's mechanism, ordered from most to least private, with each member's epsilon.

The f-DP bound (:mod:`fedllm.audit.fdp`) rejects curves; a rejected curve only says something
about epsilon when the family contains the mechanism actually run, so the family is built from
the audited site's own ledger (every release it made: DP-SGD steps, the noised count, noised
evaluations) and is chosen before any score is seen:

- :class:`GaussianFamily` (mu-GDP, epsilon in closed form) where every release is a Gaussian
  mechanism without subsampling: their composition is exactly mu-GDP.
- :class:`ScheduleFamily` otherwise (Poisson-subsampled DP-SGD): the site's own schedule with
  every noise multiplier divided by a scale ``s`` (``s = 1``: the schedule the site ran; larger:
  less noise, less private). Member ``s``'s trade-off curve comes from its privacy profile
  ``delta_s(eps)`` (dp_accounting's PLD, pessimistic, both add and remove directions) on a grid
  of epsilons: each ``(eps, delta_s(eps))`` is a guarantee the member meets, so the inverse
  blow-up ``g(y) = max(0, max_eps max((y - delta_s(eps)) e^-eps, 1 - delta_s(eps) - e^eps (1 -
  y)))`` built from them (convex: a maximum of lines) is one the member meets too. The bound is
  the epsilon of the least private member rejected, at the run's delta with the accountant the
  run reports with, so a correct implementation (member ``s = 1``) is rejected with
  probability at most the level and the bound then stays at or below the reported epsilon.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedllm.audit.fdp import (
    InverseBlowUp,
    gaussian_family_covers,
    gdp_epsilon,
    gdp_inverse_blow_up,
    gdp_mu_lower_bound,
    rejects,
    schedule_mu,
)
from fedllm.errors import ConfigError
from fedllm.privacy.accountants import get_accountant
from fedllm.privacy.events import DPEvent

# Scales tried for a schedule family: geometric from 1/64 to 4, ratio ~1.02 (epsilon resolved to
# a few percent). The bound is the largest rejected grid point: rounding down is conservative.
SCALES = tuple(float(s) for s in np.geomspace(1 / 64, 4.0, 281))
EPSILON_GRID = 2000  # points of each member's privacy profile
PROFILE_FLOOR = 1e-12  # the grid reaches the epsilon where delta_s falls to this


class Family(Protocol):
    """Trade-off curves ordered by privacy; the f-DP bound is the epsilon of the least private
    member the counts reject."""

    @property
    def name(self) -> str: ...

    @property
    def about(self) -> str: ...

    def lower_bound(self, m: int, r: int, v: int, level: float) -> float: ...


@dataclass(frozen=True)
class GaussianFamily:
    """mu-GDP, mu >= 0: exact for compositions of Gaussian releases without subsampling."""

    delta: float
    name: str = "mu-GDP"
    about: str = (
        "every release of the audited site is a Gaussian mechanism without subsampling, so "
        "its mechanism is exactly mu-GDP in each canary"
    )

    def lower_bound(self, m: int, r: int, v: int, level: float) -> float:
        return gdp_epsilon(gdp_mu_lower_bound(m, r, v, level), self.delta)


@dataclass(frozen=True)
class ScheduleFamily:
    """The audited site's schedule with its noise multipliers divided by a scale."""

    releases: tuple[DPEvent, ...]
    delta: float
    accountant: str
    name: str = "scaled schedule"
    about: str = (
        "the audited site's own release schedule (Poisson-subsampled DP-SGD and Gaussian "
        "releases) with every noise multiplier divided by a scale; trade-off curves from "
        "dp_accounting's PLD"
    )
    _curves: dict[int, InverseBlowUp] = field(default_factory=dict, compare=False, repr=False)

    def scaled(self, scale: float) -> list[DPEvent]:
        return [DPEvent(e.noise_multiplier / scale, e.sample_rate, e.steps) for e in self.releases]

    def inverse_blow_up(self, index: int) -> InverseBlowUp:
        """Member ``SCALES[index]``'s inverse blow-up, from its privacy profile (cached)."""
        if index not in self._curves:
            self._curves[index] = profile_inverse_blow_up(self.scaled(SCALES[index]))
        return self._curves[index]

    def epsilon(self, scale: float) -> float:
        return get_accountant(self.accountant).epsilon(self.scaled(scale), self.delta)

    def lower_bound(self, m: int, r: int, v: int, level: float) -> float:
        """Binary search over :data:`SCALES` (rejection is monotone: less noise, smaller
        ``g``); 0 when even perfect privacy is not rejected."""
        if not rejects(gdp_inverse_blow_up(0.0), m, r, v, level):
            return 0.0

        def rejected(index: int) -> bool:
            return rejects(self.inverse_blow_up(index), m, r, v, level)

        if not rejected(0):
            return 0.0  # rejects perfect privacy, but not the noisiest member tried
        low, high = 0, len(SCALES)  # rejected(low); high: not rejected or past the end
        while high - low > 1:
            middle = (low + high) // 2
            if rejected(middle):
                low = middle
            else:
                high = middle
        return self.epsilon(SCALES[low])


def profile_inverse_blow_up(events: Sequence[DPEvent]) -> InverseBlowUp:
    """The inverse blow-up of the composed events from their PLD privacy profile (module
    docstring): the pairs ``(eps, delta(eps))`` on a grid from 0 to where delta falls to
    :data:`PROFILE_FLOOR`."""
    pld = _pld(tuple(events))
    top = max(float(pld.get_epsilon_for_delta(PROFILE_FLOOR)), 1e-3)
    eps = np.linspace(0.0, top, EPSILON_GRID)
    delta = np.minimum(np.asarray(pld.get_delta_for_epsilon(eps), dtype=np.float64), 1.0)
    shrink = np.exp(-eps)  # (G,)
    grow = np.exp(eps)

    def inverse(y: float) -> float:
        if y <= 0.0:
            return 0.0
        if y >= 1.0:
            return 1.0
        first = float(np.max((y - delta) * shrink))
        second = float(np.max(1.0 - delta - grow * (1.0 - y)))
        return min(max(first, second, 0.0), 1.0)

    return inverse


@functools.lru_cache(maxsize=8)
def _pld(events: tuple[DPEvent, ...]) -> Any:
    from fedllm.privacy.accountants.pld import PLD

    return PLD().compose(events, 1e-5).pld()  # type: ignore[attr-defined]


def family_for(releases: Sequence[DPEvent], delta: float, accountant: str) -> Family | None:
    """The family holding the audited site's mechanism, from its ledger: mu-GDP where every
    release is Gaussian without subsampling, its scaled schedule where some are subsampled;
    None without private releases (no DP: nothing to hypothesise)."""
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"the audit's delta must be in (0, 1), got {delta}")
    releases = [e for e in releases if e.steps > 0]
    if not releases or any(e.noise_multiplier <= 0 for e in releases):
        return None
    if gaussian_family_covers(releases):
        schedule_mu(releases)  # defined: every release full batch
        return GaussianFamily(delta)
    if any(not 0.0 < e.sample_rate <= 1.0 for e in releases):
        raise ConfigError("a release's sample rate must be in (0, 1]")
    return ScheduleFamily(tuple(releases), delta, accountant)


def mu_of(releases: Sequence[DPEvent]) -> float | None:
    """The schedule's mu where it is mu-GDP exactly (None otherwise)."""
    kept = [e for e in releases if e.steps > 0]
    return schedule_mu(kept) if gaussian_family_covers(kept) else None
