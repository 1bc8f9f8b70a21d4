"""From canary scores to an epsilon lower bound: guess the most confident ins and outs, then
turn the right guesses into a bound with each analysis that covers the audited mechanism.

The attacker ranks the ``m`` canaries by score (higher: more likely included), guesses "in"
for the ``k`` highest and "out" for the ``k`` lowest and abstains on the rest (Steinke et al.
2023, experiments). Two analyses turn the counts into a bound (:data:`ANALYSES`):

- ``steinke``: (epsilon, delta)-DP, Steinke, Nasr, Jagielski 2023 (:mod:`fedllm.audit.bound`);
  holds for every mechanism.
- ``f-dp``: Mahloujifar, Melis, Chaudhuri 2024's f-DP analysis (:mod:`fedllm.audit.fdp`)
  against a family of trade-off curves that holds the audited mechanism
  (:mod:`fedllm.audit.families`, chosen from the site's ledger); much tighter for Gaussian
  mechanisms. Without such a family (no DP) it does not run.

Which ``k`` works best depends on how strong the attack is, and choosing it (or the analysis)
after seeing which guesses were right would void the confidence; so the ``1 - confidence`` is
split in advance between the analyses (:data:`ANALYSIS_SHARE`) and, within each, equally over
its guess counts (Bonferroni): the largest of all the bounds then holds at the stated
confidence. The f-DP analysis takes the larger share and one guess count, ``k = m / 20``: its
bound only grows fast when nearly every guess is right, and on simulated Gaussian scores at
the signal measured in the breast-cancer audit at reported epsilon 8 (mu ~ 1.5) with 1000 to
4000 canaries this design gave the highest bound of those we simulated (k at 3, 5, 10% of m,
one or two counts, shares 0.8 or 0.9), fixed before the benchmark's audits ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedllm.audit.bound import epsilon_lower_bound
from fedllm.audit.families import Family
from fedllm.errors import ConfigError

# Guesses on each side, as fractions of the canaries (fixed before any score is seen).
GUESS_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)
FDP_GUESS_FRACTIONS = (0.05,)

STEINKE, FDP = "steinke", "f-dp"
Bound = Callable[[int, int, int, float], float]  # (m, r, v, level) -> epsilon


@dataclass(frozen=True)
class AnalysisKind:
    """One way to turn (m, r, v) into an epsilon lower bound at a level."""

    paper: str
    fractions: tuple[float, ...]  # its guess counts, as fractions of the canaries


ANALYSES: dict[str, AnalysisKind] = {
    STEINKE: AnalysisKind(
        "Steinke, Nasr, Jagielski 2023 (one-run auditing, (epsilon, delta)-DP)", GUESS_FRACTIONS
    ),
    FDP: AnalysisKind(
        "Mahloujifar, Melis, Chaudhuri 2024 (f-DP one-run auditing)", FDP_GUESS_FRACTIONS
    ),
}
ANALYSIS_SHARE = {STEINKE: 0.2, FDP: 0.8}  # of 1 - confidence, when both run


@dataclass(frozen=True)
class Guesses:
    """One guess count's outcome and the bound it gives (at its analysis's corrected level)."""

    per_side: int  # k: "in" for the k highest scores, "out" for the k lowest
    guesses: int  # r = 2k (fewer when the sides meet)
    correct: int  # v
    epsilon: float  # the lower bound


@dataclass(frozen=True)
class Analysis:
    """One analysis's strongest bound over its guess counts, with every count's outcome."""

    name: str
    family: str  # the hypotheses it rejects
    level: float  # its share of 1 - confidence, split equally over ``tried``
    best: Guesses
    tried: tuple[Guesses, ...]
    ceiling: float = 0.0  # the bound had every guess been right: the most it can show

    @property
    def epsilon(self) -> float:
        return self.best.epsilon

    @property
    def kind(self) -> AnalysisKind:
        return ANALYSES[self.name]


@dataclass(frozen=True)
class AuditOutcome:
    """Every analysis run on one attacker's scores; the headline is the strongest."""

    canaries: int  # m
    included: int
    confidence: float
    delta: float
    analyses: tuple[Analysis, ...]

    @property
    def headline(self) -> Analysis:
        return max(self.analyses, key=lambda a: a.epsilon)

    @property
    def epsilon(self) -> float:
        return self.headline.epsilon


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


def analyse(
    name: str,
    family: str,
    bound: Bound,
    scores: np.ndarray,
    truth: np.ndarray,
    level: float,
    fractions: Sequence[float] | None = None,
) -> Analysis:
    """One analysis at ``level`` (split over its guess counts): scores (m,), truth (m,) +-1."""
    kind = ANALYSES[name]
    m = len(scores)
    counts = guess_counts(m, kind.fractions if fractions is None else fractions)
    each = level / len(counts)
    tried, ceiling = [], 0.0
    for k in counts:
        g = guess(scores, k)
        r = int(np.count_nonzero(g))
        v = int(np.count_nonzero(g == truth))
        tried.append(Guesses(k, r, v, bound(m, r, v, each)))
        ceiling = max(ceiling, bound(m, r, r, each))
    best = max(tried, key=lambda t: t.epsilon)
    return Analysis(name, family, level, best, tuple(tried), ceiling)


def audit(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    fractions: Sequence[float] | None = None,
    family: Family | None = None,
) -> AuditOutcome:
    """The epsilon lower bound of an attack whose scores (m,) rank the canaries, against the
    auditor's secret inclusion mask (m,), at ``confidence`` over every analysis and guess count
    tried. ``family``: trade-off curves that hold the audited mechanism
    (:func:`fedllm.audit.families.family_for`), so the f-DP analysis runs beside Steinke's;
    without one Steinke's alone takes the whole level. ``fractions`` replaces every
    analysis's guess counts (tests)."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ConfigError(
            f"scores {scores.shape} and inclusion mask {included.shape} must be one per canary"
        )
    if not np.all(np.isfinite(scores)):
        raise ConfigError("canary scores must be finite")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"audit confidence must be in (0, 1), got {confidence}")
    truth = np.where(included, 1, -1)
    spare = 1.0 - confidence

    def steinke(m: int, r: int, v: int, level: float) -> float:
        return epsilon_lower_bound(m, r, v, delta, 1.0 - level)

    runs: list[tuple[str, str, Bound]] = [(STEINKE, "(epsilon, delta)-DP", steinke)]
    if family is not None:
        runs.append((FDP, family.name, family.lower_bound))
    analyses = tuple(
        analyse(name, hypotheses, bound, scores, truth,
                spare * (ANALYSIS_SHARE[name] if len(runs) > 1 else 1.0), fractions)
        for name, hypotheses, bound in runs
    )  # fmt: skip
    return AuditOutcome(len(scores), int(included.sum()), confidence, delta, analyses)
