"""A site's cumulative privacy spend within a run, kept as a list of DP events.

Stored in the ClientApp's ``context.state`` between rounds so every epsilon a site reports is
cumulative and can be replayed by a fresh accountant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from flwr.app import ConfigRecord

from fedllm.errors import PrivacyBudgetExceededError, PrivacyError
from fedllm.privacy.accounting import DPEvent, epsilon

_NOISE, _RATE, _STEPS = "noise-multiplier", "sample-rate", "steps"


@dataclass
class PrivacySpend:
    """Every DP event a site has run so far, under one accountant and delta."""

    accountant: str
    delta: float
    events: list[DPEvent] = field(default_factory=list)

    def epsilon(self) -> float:
        return epsilon(self.events, self.delta, self.accountant)

    def epsilon_after(self, event: DPEvent) -> float:
        return epsilon([*self.events, event], self.delta, self.accountant)

    def check_budget(self, event: DPEvent, target_epsilon: float) -> float:
        """The epsilon after ``event``; refuses if that would exceed ``target_epsilon``."""
        after = self.epsilon_after(event)
        if after > target_epsilon:
            raise PrivacyBudgetExceededError(
                f"training this round would bring epsilon to {after:.4f}, "
                f"above the site's target-epsilon {target_epsilon}"
            )
        return after

    def record(self, events: list[DPEvent]) -> None:
        self.events.extend(events)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "accountant": self.accountant,
                "delta": self.delta,
                _NOISE: [e.noise_multiplier for e in self.events],
                _RATE: [e.sample_rate for e in self.events],
                _STEPS: [e.steps for e in self.events],
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> PrivacySpend:
        noise, rate, steps = (cast(list[float], record.get(k, [])) for k in (_NOISE, _RATE, _STEPS))
        if not len(noise) == len(rate) == len(steps):
            raise PrivacyError("stored privacy spend is inconsistent (unequal event lists)")
        return cls(
            accountant=str(record["accountant"]),
            delta=float(record["delta"]),  # type: ignore[arg-type]
            events=[
                DPEvent(float(n), float(q), int(s))
                for n, q, s in zip(noise, rate, steps, strict=True)
            ],
        )
