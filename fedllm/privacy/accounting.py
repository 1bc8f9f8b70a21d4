"""Pure privacy accounting by accountant name: the epsilon of a history of DP-SGD events and
the noise for a planned schedule. The accountants themselves live in
:mod:`fedllm.privacy.accountants`; the events in :mod:`fedllm.privacy.events`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from fedllm.privacy.accountants import ACCOUNTANTS, get_accountant
from fedllm.privacy.events import DPEvent, DPSchedule, merge


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


__all__ = ["ACCOUNTANTS", "DPEvent", "DPSchedule", "calibrate_noise", "epsilon", "merge"]
