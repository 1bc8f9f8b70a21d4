"""Pure privacy accounting by accountant name: the epsilon of a history of DP-SGD events and
the noise for a planned schedule. The accountants themselves live in
:mod:`fedllm.privacy.accountants`; the events in :mod:`fedllm.privacy.events`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from fedllm.errors import PrivacyError
from fedllm.privacy.accountants import ACCOUNTANTS, get_accountant
from fedllm.privacy.calibration import smallest_noise
from fedllm.privacy.events import DPEvent, DPSchedule, merge
from fedllm.privacy.releases import ReleasePlan


def epsilon(events: Iterable[DPEvent], delta: float, accountant: str) -> float:
    """Cumulative epsilon of every event at ``delta``, evaluated afresh by ``accountant``."""
    return get_accountant(accountant).epsilon(events, delta)


@functools.lru_cache(maxsize=64)
def calibrate_noise(
    target_epsilon: float,
    delta: float,
    schedule: DPSchedule,
    accountant: str,
    rel_tol: float = 0.01,
) -> float:
    """Smallest noise multiplier, to ``rel_tol`` of the target, whose epsilon over the whole
    ``schedule`` is <= ``target_epsilon`` (a pure function: computed once per process for each
    schedule; sites keep it in their state across processes)."""
    return get_accountant(accountant).calibrate(target_epsilon, delta, schedule, rel_tol)


@functools.lru_cache(maxsize=64)
def calibrate_plan(
    target_epsilon: float,
    delta: float,
    plan: ReleasePlan,
    accountant: str,
    rel_tol: float = 0.01,
) -> float:
    """Smallest DP-SGD noise multiplier, to ``rel_tol`` of the target, whose whole planned
    history (``plan.events``: the count, every round's steps, the evaluations, in ledger order)
    stays within ``target_epsilon``. Without releases besides DP-SGD this is
    :func:`calibrate_noise` of the schedule."""
    if not plan.fixed():
        return calibrate_noise(target_epsilon, delta, plan.schedule, accountant, rel_tol)
    method = get_accountant(accountant)
    fixed = method.epsilon(plan.fixed(), delta)
    if not fixed < target_epsilon:
        raise PrivacyError(
            f"the run's releases besides DP-SGD (its example count and {plan.evaluations} "
            f"evaluation(s)) alone spend epsilon {fixed:.4f}, leaving nothing of "
            f"`target-epsilon` {target_epsilon} for training: raise `count-noise` or "
            "`evaluation-noise`, or plan fewer `site-evaluations`"
        )
    what = (
        f"at delta {delta} over {plan.schedule.total_steps} steps and {len(plan.fixed())} "
        f"Gaussian releases with the {accountant} accountant"
    )
    return smallest_noise(
        lambda sigma: method.epsilon(plan.events(sigma), delta), target_epsilon, what, rel_tol
    )


__all__ = [
    "ACCOUNTANTS",
    "DPEvent",
    "DPSchedule",
    "ReleasePlan",
    "calibrate_noise",
    "calibrate_plan",
    "epsilon",
    "merge",
]
