"""From canary scores to an epsilon lower bound: guess the most confident ins and outs.

The attacker ranks the ``m`` canaries by score (higher: more likely included), guesses "in"
for the ``k`` highest and "out" for the ``k`` lowest and abstains on the rest (Steinke et al.
2023, experiments). Which ``k`` works best depends on how strong the attack is, and choosing it
after seeing which guesses were right would void the confidence; so a few ``k`` fixed in
advance are all tried and each is tested at ``(1 - confidence) / len(ks)`` (Bonferroni): the
largest of their bounds then holds at the stated confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedllm.audit.bound import epsilon_lower_bound
from fedllm.errors import ConfigError

# Guesses on each side, as fractions of the canaries (fixed before any score is seen).
GUESS_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)


@dataclass(frozen=True)
class Guesses:
    """One guess count's outcome and the bound it gives (at the Bonferroni-corrected level)."""

    per_side: int  # k: "in" for the k highest scores, "out" for the k lowest
    guesses: int  # r = 2k (fewer when the sides meet)
    correct: int  # v
    epsilon: float  # the lower bound


@dataclass(frozen=True)
class AuditOutcome:
    """The strongest bound over the guess counts tried, with every count's outcome."""

    canaries: int  # m
    included: int
    confidence: float
    delta: float
    best: Guesses
    tried: tuple[Guesses, ...]
    ceiling: float = 0.0  # the bound had every guess been right: what this audit can show at most

    @property
    def epsilon(self) -> float:
        return self.best.epsilon


def guess_counts(m: int, fractions: Sequence[float] = GUESS_FRACTIONS) -> tuple[int, ...]:
    """Distinct guesses-per-side for ``m`` canaries: each fraction of m, at least 1, at most
    m / 2 (so the "in" and "out" guesses never overlap)."""
    if m < 2:
        raise ConfigError(f"an audit needs at least 2 canaries, got {m}")
    return tuple(sorted({min(max(1, round(f * m)), m // 2) for f in fractions}))


def guess(scores: np.ndarray, per_side: int) -> np.ndarray:
    """+1 ("in") for the ``per_side`` highest scores, -1 ("out") for the ``per_side`` lowest,
    0 (abstain) elsewhere: shape (m,). Ties are broken by position (stable sort)."""
    order = np.argsort(scores, kind="stable")  # ascending
    guesses = np.zeros(len(scores), dtype=np.int64)
    guesses[order[:per_side]] = -1
    guesses[order[len(scores) - per_side :]] = 1
    return guesses


def audit(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    fractions: Sequence[float] = GUESS_FRACTIONS,
) -> AuditOutcome:
    """The epsilon lower bound of an attack whose scores (m,) rank the canaries, against the
    auditor's secret inclusion mask (m,), at ``confidence`` over all the guess counts tried."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ConfigError(
            f"scores {scores.shape} and inclusion mask {included.shape} must be one per canary"
        )
    if not np.all(np.isfinite(scores)):
        raise ConfigError("canary scores must be finite")
    m = len(scores)
    counts = guess_counts(m, fractions)
    corrected = 1.0 - (1.0 - confidence) / len(counts)
    truth = np.where(included, 1, -1)
    tried, ceiling = [], 0.0
    for k in counts:
        g = guess(scores, k)
        r = int(np.count_nonzero(g))
        v = int(np.count_nonzero(g == truth))
        tried.append(Guesses(k, r, v, epsilon_lower_bound(m, r, v, delta, corrected)))
        ceiling = max(ceiling, epsilon_lower_bound(m, r, r, delta, corrected))
    best = max(tried, key=lambda t: t.epsilon)
    return AuditOutcome(m, int(included.sum()), confidence, delta, best, tuple(tried), ceiling)
