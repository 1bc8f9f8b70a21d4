"""What a site releases besides its DP-SGD update, each a Gaussian mechanism in the same
cumulative epsilon, and the plan of one run's releases that its DP-SGD noise is calibrated for.

Adjacency is add/remove-one record. Two numbers would otherwise leave a site in the clear:

- **its example count** ``n``: released once per run as ``max(1, round(n + N(0, s^2)))``
  (sensitivity 1, noise multiplier ``s``). DP-SGD's sampling rate, steps per epoch and the
  normalizer (the expected batch size) are derived from the released count, and the example
  weight in (secure) averaging is that count, so nothing a site sends depends on the exact
  ``n`` beyond this accounted release. (Publishing the exact ``n`` would make replace-one the
  honest relation, at twice the sensitivity: see README.)
- **an evaluation** of a global model on its test rows: ``(sum_i a_i, n_test)`` plus
  ``N(0, (z sqrt 2)^2)`` on each, with ``a_i`` in [0, 1] example i's accuracy. Adding or
  removing one test row moves the pair by at most ``sqrt 2`` in L2 whatever model the server
  sends, so each evaluation is a Gaussian mechanism of multiplier ``z``.

A Gaussian mechanism is the subsampled Gaussian at sample rate 1, so each release is one
:class:`DPEvent` every accountant composes with the DP-SGD steps (ledger entries of kind
``count`` and ``evaluate``). Pure math here; the site's ledger records them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedllm.errors import PrivacyError
from fedllm.privacy.events import DPEvent, DPSchedule, merge

COUNT_SENSITIVITY = 1.0  # one record more or fewer moves the count by 1
EVALUATION_SENSITIVITY = math.sqrt(2.0)  # ... and (sum of accuracies, count) by <= sqrt 2


def gaussian_event(noise_multiplier: float) -> DPEvent:
    """One Gaussian mechanism (noise std / sensitivity = ``noise_multiplier``) as an event."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise PrivacyError(f"a release's noise multiplier must be > 0, got {noise_multiplier}")
    return DPEvent(noise_multiplier, 1.0, 1)


def release_count(n: int, noise: float, rng: np.random.Generator) -> int:
    """The example count as released: ``n`` plus Gaussian noise of std ``noise``, rounded and
    at least 1 (rounding and the floor are post-processing)."""
    return max(1, round(n + rng.normal(0.0, noise * COUNT_SENSITIVITY)))


@dataclass(frozen=True)
class NoisedScores:
    """An evaluation as released: the noised sum of the examples' accuracies and the noised
    example count (either may be negative; their ratio estimates the accuracy)."""

    correct: float
    count: float


def noised_scores(
    correct: float, count: int, noise_multiplier: float, rng: np.random.Generator
) -> NoisedScores:
    """``(correct, count)`` with Gaussian noise of std ``noise_multiplier * sqrt 2`` on each."""
    gaussian_event(noise_multiplier)  # validates
    std = noise_multiplier * EVALUATION_SENSITIVITY
    a, b = rng.normal(0.0, std, 2)
    return NoisedScores(correct + float(a), count + float(b))


@dataclass(frozen=True)
class ReleasePlan:
    """Everything a site plans to release in one run, in the order its ledger will record it:
    the example count first (``count_noise`` None: not released), then each round's DP-SGD
    steps, with an evaluation before the round's training when its train message carries one
    (``evaluated_before``) and after it when an evaluate message follows (``evaluated_after``).
    An honest run's ledger holds exactly these events, so its final epsilon is the calibrated
    one."""

    schedule: DPSchedule
    count_noise: float | None = None
    evaluation_noise: float = 1.0
    evaluated_before: frozenset[int] = frozenset()
    evaluated_after: frozenset[int] = frozenset()

    @property
    def evaluations(self) -> int:
        return len(self.evaluated_before) + len(self.evaluated_after)

    def fixed(self) -> list[DPEvent]:
        """The releases whose noise is set, not calibrated: the count and the evaluations."""
        count = [gaussian_event(self.count_noise)] if self.count_noise is not None else []
        return count + [gaussian_event(self.evaluation_noise)] * self.evaluations

    def events(self, noise_multiplier: float) -> list[DPEvent]:
        """The planned history at DP-SGD noise ``noise_multiplier``, merged."""
        out = [gaussian_event(self.count_noise)] if self.count_noise is not None else []
        evaluation = gaussian_event(self.evaluation_noise) if self.evaluations else None
        for server_round in range(1, self.schedule.rounds + 1):
            if evaluation is not None and server_round in self.evaluated_before:
                out.append(evaluation)
            out.append(self.schedule.round_event(noise_multiplier))
            if evaluation is not None and server_round in self.evaluated_after:
                out.append(evaluation)
        return merge(out)
