"""Rényi DP (Mironov 2017) of the Poisson-subsampled Gaussian (Mironov, Talwar & Zhang 2019),
by Opacus's analysis functions: the RDP curve of a history is the sum of its events' curves,
so composing one more event is one addition; epsilon by Opacus's RDP-to-(epsilon, delta)
conversion (Balle et al. 2020). The figures are Opacus's ``RDPAccountant``'s, bit for bit: the
same per-order values, summed in the same order.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedllm.privacy.accountants.base import Accountant, Composition
from fedllm.privacy.events import DPEvent

ORDERS = RDPAccountant.DEFAULT_ALPHAS  # Opacus's own orders: 1.1..10.9, 12..63

Curve = np.ndarray | float  # RDP at every order in ORDERS; 0.0 for an empty history


@functools.lru_cache(maxsize=1024)
def unit_curve(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one step at every order: an event of ``k`` steps is ``k`` times this. Cached per
    mechanism: Opacus's series for fractional orders is most of an accountant evaluation."""
    curve = np.asarray(
        compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=ORDERS)
    )
    curve.flags.writeable = False
    return curve


def event_curve(event: DPEvent) -> np.ndarray:
    return unit_curve(event.sample_rate, event.noise_multiplier) * event.steps  # type: ignore[no-any-return]


def curve_epsilon(curve: Curve, delta: float) -> float:
    """Epsilon at ``delta`` of an RDP curve, as ``RDPAccountant.get_epsilon`` converts it."""
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        # Opacus warns when the best order is its largest; the bound stays valid, only looser.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        eps, _ = get_privacy_spent(orders=ORDERS, rdp=curve, delta=delta)
    return float(eps)


class RDPComposition(Composition):
    """The curve of every event but the last (``closed``), the last kept apart so that more
    steps of it join it as Opacus joins them: the sum is Opacus's, term for term."""

    accountant = "rdp"

    def __init__(self, delta: float, history: tuple[DPEvent, ...] = (), closed: Curve = 0.0):
        super().__init__(delta, history)
        self.closed = closed

    def curve(self) -> Curve:
        if not self.history:
            return 0.0
        return self.closed + event_curve(self.history[-1])

    def _joined(self, last: DPEvent) -> RDPComposition:
        return RDPComposition(self.delta, (*self.history[:-1], last), self.closed)

    def _appended(self, event: DPEvent) -> RDPComposition:
        closed = self.curve()  # the last event closes
        return RDPComposition(self.delta, (*self.history, event), closed)

    def epsilon_at(self, delta: float) -> float:
        return curve_epsilon(self.curve(), delta) if self.history else 0.0

    def epsilon(self) -> float:
        return self.epsilon_at(self.delta)


class RDP(Accountant):
    name = "rdp"
    about = "Rényi DP of the subsampled Gaussian (Opacus's analysis): additive, looser than PRV"

    def _start(self, delta: float) -> RDPComposition:
        return RDPComposition(delta)
