"""Pure privacy accounting: DP-SGD events, epsilon of a history, noise for a schedule.

An event is one stretch of DP-SGD steps at a fixed noise multiplier and Poisson sampling rate,
the unit Opacus accountants compose. Nothing here holds state: the caller keeps the history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from fedllm.errors import PrivacyError

ACCOUNTANTS = ("prv", "rdp")


@dataclass(frozen=True)
class DPEvent:
    """``steps`` DP-SGD steps, each a subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class DPSchedule:
    """The steps a site plans for the whole run: every round it may take part in."""

    sample_rate: float
    steps_per_round: int
    rounds: int

    @classmethod
    def for_site(
        cls, num_examples: int, batch_size: int, local_epochs: int, rounds: int
    ) -> DPSchedule:
        """Poisson sampling as Opacus's DPDataLoader does it: q = 1 / ceil(n / B)."""
        if num_examples < 1:
            raise PrivacyError(f"a site needs at least one training example, got {num_examples}")
        batches = math.ceil(num_examples / batch_size)
        return cls(sample_rate=1.0 / batches, steps_per_round=batches * local_epochs, rounds=rounds)

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * self.rounds

    def round_event(self, noise_multiplier: float) -> DPEvent:
        return DPEvent(noise_multiplier, self.sample_rate, self.steps_per_round)


def merge(events: Iterable[DPEvent]) -> list[DPEvent]:
    """Join consecutive events with equal parameters, as an Opacus accountant's ``step`` does."""
    merged: list[DPEvent] = []
    for event in events:
        if event.steps <= 0:
            continue
        last = merged[-1] if merged else None
        if last and (last.noise_multiplier, last.sample_rate) == (
            event.noise_multiplier,
            event.sample_rate,
        ):
            merged[-1] = DPEvent(last.noise_multiplier, last.sample_rate, last.steps + event.steps)
        else:
            merged.append(event)
    return merged


def epsilon(events: Sequence[DPEvent], delta: float, accountant: str) -> float:
    """Cumulative epsilon of every event at ``delta``, by a fresh Opacus accountant."""
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(
            f"`accountant` must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}"
        )
    history = merge(events)
    if not history:
        return 0.0
    acct = create_accountant(mechanism=accountant)
    acct.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in history]
    return float(acct.get_epsilon(delta=delta))


def calibrate_noise(
    target_epsilon: float, delta: float, schedule: DPSchedule, accountant: str
) -> float:
    """Smallest noise multiplier (to 1% of the target) whose epsilon over ``schedule`` is
    <= ``target_epsilon``: the whole planned run spends at most the target."""
    if target_epsilon <= 0:
        raise PrivacyError(f"`target-epsilon` must be > 0, got {target_epsilon}")
    try:
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=schedule.sample_rate,
            steps=schedule.total_steps,
            accountant=accountant,
            epsilon_tolerance=0.01 * target_epsilon,
        )
    except ValueError as err:
        raise PrivacyError(
            f"cannot reach `target-epsilon` {target_epsilon} at delta {delta} over "
            f"{schedule.total_steps} steps: {err}"
        ) from err
    return float(sigma)
