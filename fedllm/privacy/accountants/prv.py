"""PRV accounting (Gopi, Lee & Wutschitz 2021) exactly as Opacus's ``PRVAccountant`` computes
it, from Opacus's own analysis functions, with the RDP curves it sizes its domain from composed
incrementally and cached per mechanism (those were about 90% of an evaluation).

The PRV figure does not compose incrementally: Opacus sizes the discretization domain and mesh
from the whole history (its RDP bound, its total steps), so each history is discretized anew.
A composition therefore keeps the merged history and its RDP curve; the exact figure is
computed on demand and cached per history, and :meth:`PRVComposition.bound` bounds it from the
RDP curve alone, in microseconds, so a budget check needs the exact figure only where the
bound does not already decide.

The exact figure's cost grows with the history: Opacus discretizes every merged event on one
grid whose mesh shrinks as one over the square root of the total steps, then transforms and
convolves them all, so its time and memory go with the grid's points times the events (a
ledger of 50 runs on 5 schedules: 1.5 million points x 50 events, not done within 60 s and
4 GB). :func:`prv_size` predicts that product from the same domain sizing, in well under a
millisecond, before anything is discretized. Past :data:`MAX_PRV_SIZE` the exact figure is out
of reach and :meth:`PRVComposition.counted` counts the history by Google's PLD (the `pld`
accountant: pessimistic, so an upper bound; below PRV by about PRV's ``eps_error`` on our
schedules), composed from the memoized PLD of the history but its last event, so a further
round costs one convolution. The choice depends on the merged history and delta alone.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, cast

import numpy as np
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    discretize,
)
from scipy.special import erfc

from fedllm.errors import PrivacyError
from fedllm.privacy.accountants.base import Accountant, Composition
from fedllm.privacy.accountants.pld import PLD, PLDComposition
from fedllm.privacy.accountants.rdp import (
    Curve,
    RDPComposition,
    curve_epsilon,
    event_curve,
    unit_curve,
)
from fedllm.privacy.events import DPEvent
from fedllm.privacy.memo import Memo

EPS_ERROR = 0.01  # PRVAccountant.get_epsilon's defaults: eps_error, and delta_error = delta/1000
DELTA_ERROR_SHARE = 1e-3
SQRT2 = np.sqrt(2)  # as Opacus's prvs module computes it
# Grid points x merged events past which the exact figure is not attempted: 1-2 s and under
# 100 MB on a shared 2-core machine (1.6 million took 1.2 s and 64 MB; time grows faster than
# the product beyond: 13 million took 12 s and 300 MB, 76 million did not finish in 60 s).
MAX_PRV_SIZE = 2_000_000
_CLOSED: Memo[Any] = Memo(16)  # (merged history, delta) -> its PLD, for histories out of reach


@functools.lru_cache(maxsize=512)
def _domain(history: tuple[DPEvent, ...], delta: float) -> Domain:
    """The grid Opacus's ``PRVAccountant`` discretizes a (non-empty) merged history on: its
    ``compute_safe_domain_size`` (Gopi et al., remark 5.6, as Opacus implements it) and its
    mesh, which shrinks as one over the square root of the total steps."""
    delta_error = delta * DELTA_ERROR_SHARE
    total = sum(e.steps for e in history)
    curve: Curve = sum(event_curve(e) for e in history)  # summed as RDPAccountant sums
    size = curve_epsilon(curve, delta_error / 4)
    # Opacus takes the maximum over every event's one-step curve; each mechanism once gives
    # the same maximum, without a conversion per run of a recurring schedule.
    for rate, noise in dict.fromkeys((e.sample_rate, e.noise_multiplier) for e in history):
        size = max(size, curve_epsilon(unit_curve(rate, noise), delta_error / (8 * total)))
    size = max(size, EPS_ERROR) + 3
    mesh = EPS_ERROR / np.sqrt(total * np.log(12 / delta_error) / 2)
    return Domain.create_aligned(-size, size, mesh)


def prv_size(history: tuple[DPEvent, ...], delta: float) -> int:
    """The exact figure's work: grid points times merged events, each discretized,
    transformed and convolved on the whole grid (0 for an empty history)."""
    return _domain(history, delta).size * len(history) if history else 0


@functools.lru_cache(maxsize=512)
def prv_epsilon(history: tuple[DPEvent, ...], delta: float) -> float:
    """``PRVAccountant().get_epsilon(delta)`` on the merged ``history``: the same domain, mesh,
    discretization, composition and upper estimate (``eps_upper``), step for step. Its cost
    is :func:`prv_size`; callers check that first (:meth:`PRVComposition.counted`)."""
    if not history:
        return 0.0
    delta_error = delta * DELTA_ERROR_SHARE
    steps = [e.steps for e in history]
    domain = _domain(history, delta)
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        truncated = [
            _Truncated(
                PoissonSubsampledGaussianPRV(e.sample_rate, e.noise_multiplier),
                domain.t_min,
                domain.t_max,
            )
            for e in history
        ]
        composed = compose_heterogeneous(
            dprvs=[discretize(t, domain) for t in truncated], num_self_compositions=steps
        )
        _, _, upper = composed.compute_epsilon(delta, delta_error, EPS_ERROR)
    return float(upper)


class _Truncated(TruncatedPrivacyRandomVariable):
    """Opacus's truncated PRV, its values unchanged, faster where ``discretize`` integrates
    its mean: quadrature asks for ~600 scalar points, each of which Opacus evaluates through
    ``np.where`` on both branches and with the constant ``cdf(t_min)`` recomputed (~75% of a
    PRV evaluation). Scalars here take the branch that applies, with the same numpy and scipy
    functions in the same order, and ``cdf(t_min)`` once."""

    def __init__(self, prv: PoissonSubsampledGaussianPRV, t_min: float, t_max: float) -> None:
        super().__init__(prv, t_min, t_max)
        with np.errstate(divide="ignore"):  # q = 1: log(0) = -inf, every t is above it
            self._support_from = np.log(1 - prv.sample_rate)
        self._cdf_min = self._scalar_cdf(t_min)

    def cdf(self, t: Any) -> Any:
        if np.ndim(t) != 0:
            return super().cdf(t)
        if t < self.t_min:
            return 0.0
        if not t < self.t_max:
            return 1.0
        return (self._scalar_cdf(t) - self._cdf_min) / self._remaining_mass

    def _scalar_cdf(self, t: float) -> Any:
        """``PoissonSubsampledGaussianPRV.cdf`` at one point (propositions B1 and B4 of Gopi et
        al.), written as Opacus writes it."""
        q, sigma = self._prv.sample_rate, self._prv.noise_multiplier
        if not t > self._support_from:
            return 0.0
        z = np.log((np.exp(t) + q - 1) / q)
        return (
            -q * erfc((2 * z * sigma**2 - 1) / (2 * SQRT2 * sigma)) / 2
            - (1 - q) * erfc((2 * z * sigma**2 + 1) / (2 * SQRT2 * sigma)) / 2
            + 1.0
        )


class PRVComposition(Composition):
    """The merged history and its RDP curve; the exact PRV figure on demand."""

    accountant = "prv"

    def __init__(self, rdp: RDPComposition) -> None:
        super().__init__(rdp.delta, rdp.history)
        self.rdp = rdp

    def _joined(self, last: DPEvent) -> PRVComposition:
        return PRVComposition(self.rdp._joined(last))

    def _appended(self, event: DPEvent) -> PRVComposition:
        return PRVComposition(self.rdp._appended(event))

    @functools.cached_property
    def size(self) -> int:
        """:func:`prv_size` of the history: the exact figure's work."""
        return prv_size(self.history, self.delta)

    def in_reach(self) -> bool:
        return self.size <= MAX_PRV_SIZE

    def counted(self) -> Composition:
        """This composition where the exact figure is in reach, else PLD's of the history."""
        return self if self.in_reach() else pld_composition(self.history, self.delta)

    def within(self, limit: float) -> bool:
        """As :meth:`Composition.within`, with :meth:`bound` deciding first also where the
        history counts by PLD, so a check far from the limit computes neither figure. Sound
        for the guarantee: the bound is RDP's conversion (a proven upper bound on the true
        epsilon) plus a margin. Consistent with the figure recorded: the bound is above PLD's
        pessimistic figure on every random history tested (no proof; where it were not, the
        recorded figure could exceed the limit a bound let through by that gap)."""
        return self.bound() <= limit or super().within(limit)

    def epsilon(self) -> float:
        """The exact PRV figure; refused (never attempted) where it is out of reach."""
        if not self.in_reach():
            raise PrivacyError(
                f"the exact PRV figure of this history is out of reach: {self.size:,} grid "
                f"points x events ({len(self.history)} events) is past {MAX_PRV_SIZE:,}; "
                "the history counts by PLD (figure())"
            )
        return prv_epsilon(self.history, self.delta)

    def bound(self) -> float:
        """RDP at ``delta - 2 delta_error`` plus twice ``eps_error``: PRV's upper estimate is
        ``eps(delta - delta_error) + eps_error`` of the discretized composition, which Gopi et
        al.'s error bound (the guarantee Opacus's estimate rests on) keeps below the true
        ``eps(delta - 2 delta_error) + 2 eps_error``, itself below RDP's (tested on random
        histories)."""
        if not self.history:
            return 0.0
        return self.rdp.epsilon_at(self.delta * (1 - 2 * DELTA_ERROR_SHARE)) + 2 * EPS_ERROR


def pld_composition(history: tuple[DPEvent, ...], delta: float) -> PLDComposition:
    """PLD's composition of a merged history (what the `pld` accountant composes from the same
    entries, operation for operation), built on the memoized PLD of the history but its last
    event: a further round of the last schedule, or a new schedule, costs one convolution."""
    return PLDComposition(delta, history, _closed(history[:-1], delta))


def _closed(prefix: tuple[DPEvent, ...], delta: float) -> Any:
    """The PLD of ``prefix`` (None when empty): from that of ``prefix`` but its last event
    where the memo holds it, else composed afresh."""
    if not prefix:
        return None
    known = _CLOSED.get((prefix, delta))
    if known is None:
        earlier = _CLOSED.get((prefix[:-1], delta)) if len(prefix) > 1 else None
        if earlier is None and len(prefix) > 1:
            earlier = cast(PLDComposition, PLD().compose(prefix[:-1], delta)).pld()
        known = _CLOSED.put((prefix, delta), PLDComposition(delta, prefix, earlier).pld())
    return known


class PRV(Accountant):
    name = "prv"
    about = "PRV of the subsampled Gaussian (Opacus's PRVAccountant, exact): tight, not additive"

    def _start(self, delta: float) -> PRVComposition:
        return PRVComposition(RDPComposition(delta))
