"""What one round did, site by site: the one record a strategy hands to the run recorder.

:class:`server.site_records.SiteRecords` fills a :class:`RoundLog` while the round runs (from
the sites' replies and the averaging's verdict) and hands it, closed, to
:class:`server.recorder.RunRecorder` after the central evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedllm import metrics as m
from fedllm import protocol as proto


@dataclass(frozen=True)
class Refusal:
    """A site's refusal to do what the round asked: the kind (budget, policy, ledger, data...)
    and its own reason."""

    kind: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {proto.REFUSAL_KIND: self.kind, proto.REFUSAL_REASON: self.reason}


@dataclass(frozen=True)
class ClientDPRound:
    """Site-level (client) DP after a round: the cumulative epsilon of the released sums and,
    when a sum was released this round, the noise it carried and how many sites it summed."""

    epsilon: float
    noise_multiplier: float | None = None  # realized: z * sqrt(summed / sampled)
    clip: float | None = None
    summed: int | None = None
    sampled: int | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {
            m.CLIENT_EPSILON: self.epsilon,
            m.CLIENT_NOISE_MULTIPLIER: self.noise_multiplier,
        }
        if self.summed is not None:  # accounted this round
            out[m.CLIENT_CLIP] = self.clip
            out[m.CLIENT_SUMMED] = self.summed
            out[proto.CLIENT_DP_SAMPLED] = self.sampled
        return out


@dataclass
class RoundLog:
    """One round, by site name: who trained (with the metrics each reported), who refused and
    why, who dropped out (stage and why), which updates (or the aggregate) were rejected, who
    was not asked to train and why (not sampled, not connected), the sites' own evaluation of
    the new global model, and the site-level DP figures."""

    server_round: int
    trained: dict[str, dict[str, float]] = field(default_factory=dict)
    refused: dict[str, Refusal] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # not asked to train, and why
    evaluated: dict[str, dict[str, float]] = field(default_factory=dict)
    client_dp: ClientDPRound | None = None

    def federated_accuracy(self) -> float | None:
        """The sites' evaluation accuracy, weighted by their test examples; for noised
        evaluations (under DP) the ratio of the summed noised sums, clipped to [0, 1] (None
        when the noised count is not positive)."""
        total = sum(e[proto.NUM_EXAMPLES] for e in self.evaluated.values())
        if any(proto.CORRECT in e for e in self.evaluated.values()):
            correct = sum(e.get(proto.CORRECT, 0.0) for e in self.evaluated.values())
            return min(1.0, max(0.0, correct / total)) if total > 0 else None
        if not total:
            return None
        return (
            sum(e[proto.ACCURACY] * e[proto.NUM_EXAMPLES] for e in self.evaluated.values()) / total
        )
