"""Accountants by name, as chosen by the run config's `accountant` key and listed by site
policies and ledger entries. Each turns a history of DP-SGD events into an epsilon at a delta,
composes one event at a time, and calibrates noise for a planned schedule.

- ``prv``: Opacus's PRVAccountant, exact (the default): tight; not incremental, so a budget
  check decides by a provable RDP bound first and evaluates PRV only where that does not.
  Its cost grows with the history's distinct schedules and total steps; past a stated size it
  is not attempted and the history counts by ``pld`` (see ``Composition.figure``).
- ``rdp``: Opacus's RDP analysis: looser, composes by adding curves (microseconds).
- ``pld``: Google's dp-accounting PLD: tight (below PRV by PRV's 0.01 margin on our
  schedules), composes incrementally (milliseconds).
"""

from fedllm.errors import PrivacyError
from fedllm.privacy.accountants.base import Accountant, Composition, Figure, NotPrivate
from fedllm.privacy.accountants.pld import PLD
from fedllm.privacy.accountants.prv import PRV
from fedllm.privacy.accountants.rdp import RDP

ACCOUNTANTS: dict[str, Accountant] = {a.name: a for a in (PRV(), RDP(), PLD())}


def get_accountant(name: str) -> Accountant:
    """The accountant registered as ``name``; an unknown name lists the known ones."""
    if name not in ACCOUNTANTS:
        raise PrivacyError(f"`accountant` must be one of {', '.join(ACCOUNTANTS)}, got {name!r}")
    return ACCOUNTANTS[name]


__all__ = ["ACCOUNTANTS", "Accountant", "Composition", "Figure", "NotPrivate", "get_accountant"]
