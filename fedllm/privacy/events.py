"""What accountants compose: DP-SGD events and a site's planned schedule (pure descriptions).

An event is one stretch of DP-SGD steps at a fixed noise multiplier and Poisson sampling rate,
the unit Opacus accountants compose. Nothing here holds state: the caller keeps the history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from fedllm.errors import PrivacyError


@dataclass(frozen=True)
class DPEvent:
    """``steps`` DP-SGD steps, each a subsampled Gaussian mechanism (noise 0: not private)."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def joins(self, other: DPEvent) -> bool:
        """Same mechanism: the two compose as one event of their summed steps."""
        return (self.noise_multiplier, self.sample_rate) == (
            other.noise_multiplier,
            other.sample_rate,
        )


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

    def whole_run(self, noise_multiplier: float) -> DPEvent:
        """Every planned round as one event: what the rounds compose to, once merged."""
        return DPEvent(noise_multiplier, self.sample_rate, self.total_steps)


def merge(events: Iterable[DPEvent]) -> list[DPEvent]:
    """Join consecutive events of the same mechanism, as an Opacus accountant's ``step`` does;
    events of no steps are dropped. Every accountant here is a function of the merged history."""
    merged: list[DPEvent] = []
    for event in events:
        if event.steps <= 0:
            continue
        if merged and merged[-1].joins(event):
            last = merged[-1]
            merged[-1] = DPEvent(last.noise_multiplier, last.sample_rate, last.steps + event.steps)
        else:
            merged.append(event)
    return merged
