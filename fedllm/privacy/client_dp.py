"""Client-level (site-level) DP: clip a site's whole update, add distributed Gaussian noise,
and account the released sum across rounds (DP-FedAvg, McMahan et al. 2018; distributed
noise before secure aggregation as in Kairouz et al. 2021).

Each sampled site clips its update (local minus global model) to L2 norm ``C`` and adds
``N(0, (z C)^2 / t)`` per value before masking, where ``t`` is the fewest sites any released
sum can hold: secure aggregation's threshold (fewer survivors cannot be unmasked), or 1
without secure aggregation (the server sees each update). A sum of ``k >= t`` sites then
carries ``N(0, (z C)^2 k / t)``: a Gaussian mechanism of sensitivity ``C`` (one site added or
removed) at noise multiplier ``z sqrt(k / t) >= z``. Every round is accounted at its realized
multiplier, which dropouts can only raise above the ``z`` calibrated for the planned rounds,
and nothing the server claims lowers a site's noise: the number of sampled sites ``m`` it
announces is bounded by each site's policy (`max-federation-size`) and not used for the noise.

The server samples a fixed number of sites per round (Flower's ``sample_nodes``), not Poisson:
Opacus's subsampled-Gaussian accountants do not cover that, so no amplification by the
server's sampling is claimed (sample rate 1 per round, an upper bound), as for record-level DP.

Pure math here; :class:`ClientDPAccountant` holds the history of one run's rounds, composed
round by round (each round composes only its own event onto the run's composition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fedllm.errors import PrivacyError
from fedllm.privacy.accountants import Composition, get_accountant
from fedllm.privacy.accounting import calibrate_noise
from fedllm.privacy.events import DPEvent, DPSchedule

SITE_SAMPLE_RATE = 1.0  # no amplification by the server's (fixed-size) sampling of sites


def calibrate_client_noise(
    target_epsilon: float, delta: float, rounds: int, accountant: str
) -> float:
    """Noise multiplier ``z`` whose epsilon after ``rounds`` full rounds (every sampled site
    summed) is at most ``target_epsilon`` at ``delta``, by the Opacus accountant."""
    schedule = DPSchedule(sample_rate=SITE_SAMPLE_RATE, steps_per_round=1, rounds=rounds)
    return calibrate_noise(target_epsilon, delta, schedule, accountant)


def site_noise_std(noise_multiplier: float, clip: float, guaranteed: int) -> float:
    """Per-value noise std each site adds when any released sum holds at least ``guaranteed``
    sites' noise: ``z C / sqrt(t)``."""
    if guaranteed < 1:
        raise PrivacyError(f"client-level DP needs at least one site in a sum, got {guaranteed}")
    return noise_multiplier * clip / math.sqrt(guaranteed)


def realized_noise_multiplier(noise_multiplier: float, summed: int, guaranteed: int) -> float:
    """The multiplier of a released sum of ``summed`` sites, each adding ``z C / sqrt(t)``."""
    if not 1 <= guaranteed <= summed:
        raise PrivacyError(
            f"a released sum of {summed} sites is below the {guaranteed} every site's noise "
            "was set for"
        )
    return noise_multiplier * math.sqrt(summed / guaranteed)


def clip_update(delta: np.ndarray, clip: float) -> np.ndarray:
    """``delta * min(1, C / ||delta||_2)``: shape unchanged, L2 norm at most ``clip``."""
    norm = float(np.linalg.norm(delta))
    return delta * min(1.0, clip / norm) if norm > 0 else delta.copy()


def privatize_update(
    delta: np.ndarray, clip: float, noise_std: float, rng: np.random.Generator
) -> np.ndarray:
    """A site's share of the distributed mechanism: its clipped update plus its noise (P,)."""
    return clip_update(delta, clip) + rng.normal(0.0, noise_std, delta.shape)


def clip_range_needed(clip: float, noise_std: float, tail: float = 8.0) -> float:
    """The smallest secure-aggregation clip range a noised value stays within (clipped value
    at most ``C``, plus ``tail`` standard deviations of noise: exceeded with probability
    about 1e-15 per value). Clipping a noised value would break the sum's Gaussian noise."""
    return clip + tail * noise_std


@dataclass
class ClientDPAccountant:
    """Site-level epsilon of one run: one Gaussian event per round at its realized noise."""

    noise_multiplier: float  # z, calibrated for the planned rounds
    clip: float
    delta: float
    target_epsilon: float
    accountant: str
    events: list[DPEvent] = field(default_factory=list)
    _composed: Composition = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._composed = get_accountant(self.accountant).compose(self.events, self.delta)

    @classmethod
    def calibrated(
        cls, target_epsilon: float, delta: float, clip: float, rounds: int, accountant: str
    ) -> ClientDPAccountant:
        z = calibrate_client_noise(target_epsilon, delta, rounds, accountant)
        return cls(z, clip, delta, target_epsilon, accountant)

    @property
    def epsilon(self) -> float:
        """Cumulative site-level epsilon of every round released so far."""
        return self._composed.epsilon()

    def epsilon_after_full_round(self) -> float:
        """The epsilon the next round would bring with every sampled site summed."""
        planned = DPEvent(self.noise_multiplier, SITE_SAMPLE_RATE, 1)
        return self._composed.then(planned).epsilon()

    def record(self, summed: int, guaranteed: int) -> float:
        """Account one released sum of ``summed`` sites whose noise was set for sums of at
        least ``guaranteed``; the realized z."""
        z = realized_noise_multiplier(self.noise_multiplier, summed, guaranteed)
        event = DPEvent(z, SITE_SAMPLE_RATE, 1)
        self.events.append(event)
        self._composed = self._composed.then(event)
        return z
