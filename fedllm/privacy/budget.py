"""What a site has spent, from its verified ledger: the composed privacy loss of its entries,
kept per ledger head, so a budget check or a new entry composes only the new round's event.

A composition is stored under the head it covers (entry count and that entry's hash: by the
hash chain, the hash also names every entry before it) and its scope (accountant, delta, and
optionally one run's entries). Asked for a ledger's composition, the memo takes the longest
prefix of the ledger it holds one for, composes the entries after it and stores the result
under the new head. The ledger stays the only source of truth: a ledger changed in any other
way, or a new process, composes from its first entry again.

An entry records the figure that counts its history (:meth:`Composition.figure`): the run's
accountant's, or where that is out of reach (exact PRV on a long ledger of many schedules),
PLD's, with the accountant that gave it. The choice depends on the entries alone, so a replay
recomputes each entry with the accountant it names and refuses one that names an accountant
whose figure is out of reach on its history.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedllm.errors import LedgerError, PrivacyBudgetExceededError
from fedllm.privacy.accountants import Composition, Figure, get_accountant
from fedllm.privacy.chain import GENESIS, LedgerEntry, LedgerState
from fedllm.privacy.events import DPEvent
from fedllm.privacy.memo import Memo


@dataclass(frozen=True)
class Scope:
    """Whose spend and how it is counted: every entry (``run_id`` None) or one run's."""

    accountant: str
    delta: float
    run_id: str | None = None

    def counts(self, entry: LedgerEntry) -> bool:
        return self.run_id is None or entry.run_id == self.run_id


log = logging.getLogger(__name__)

_COMPOSED: Memo[Composition] = Memo(256)  # (scope, entry count, last hash) -> composition


def spent(
    entries: Sequence[LedgerEntry], delta: float, accountant: str, run_id: str | None = None
) -> Composition:
    """The composed privacy loss of a verified ledger's entries (all of them, or those of run
    ``run_id``) at ``delta`` by ``accountant``, composing only what the memo lacks."""
    _check_chain(entries)
    scope = Scope(accountant, delta, run_id)
    start, base = 0, None
    for count in range(len(entries), 0, -1):  # the longest prefix already composed
        base = _COMPOSED.get((scope, count, entries[count - 1].hash))
        if base is not None:
            start = count
            break
    composition = base or get_accountant(accountant).start(delta)
    composition = composition.then_all(e.event for e in entries[start:] if scope.counts(e))
    if entries and start < len(entries):
        _COMPOSED.put((scope, len(entries), entries[-1].hash), composition)
    return composition


def remember(entries: Sequence[LedgerEntry], composition: Composition, scope: Scope) -> None:
    """Store ``composition`` as that of ``entries`` (just appended: it holds their events)."""
    if entries:
        _COMPOSED.put((scope, len(entries), entries[-1].hash), composition)


def recorded(composition: Composition, accountant: str) -> Figure:
    """The figure a new entry records for ``composition`` (the site's whole ledger and the new
    event, composed by the run's ``accountant``), saying so when another accountant gives it."""
    figure = composition.figure()
    if figure.accountant != accountant:
        log.info(
            "the exact %s figure of this site's ledger (%d events after merging) is out of reach; "
            "the new entry records %s's figure, epsilon %.4f",
            accountant,
            len(composition.history),
            figure.accountant,
            figure.epsilon,
        )
    return figure


def history_epsilon(entries: Sequence[LedgerEntry], delta: float, accountant: str) -> float:
    """Cumulative epsilon of ``entries`` (any selection of a ledger's entries, oldest first) at
    ``delta``, evaluated afresh: infinite once any was not private; PLD's where the exact
    figure of ``accountant`` is out of reach (see :meth:`Composition.figure`)."""
    return get_accountant(accountant).epsilon((e.event for e in entries), delta)


def check_budget(
    state: LedgerState,
    events: DPEvent | Sequence[DPEvent],
    delta: float,
    accountant: str,
    max_epsilon: float,
) -> None:
    """Refuses ``events`` (one, or several in order) if they would take the site's cumulative
    epsilon (the figure its next entry would record) past ``max_epsilon``; decides by the
    accountant's bound when that suffices (see :meth:`Composition.within`)."""
    before = spent(state.entries, delta, accountant)
    after = before.then_all([events] if isinstance(events, DPEvent) else events)
    if not after.within(max_epsilon):
        now, then = before.figure().epsilon, after.figure().epsilon
        raise PrivacyBudgetExceededError(
            f"the site's budget is spent: epsilon is {now:.4f} over {len(state.entries)} ledger "
            f"entries and this round would bring it to {then:.4f}, above the site's max-epsilon "
            f"{max_epsilon} (delta {delta})"
        )


def replay(entries: Sequence[LedgerEntry], source: str) -> None:
    """Recompute every entry's cumulative epsilon from the entries alone, with fresh
    compositions (one per accountant and delta the entries use, each fed every entry);
    raises LedgerError at the first whose recorded epsilon does not match, or that names an
    accountant whose figure is out of reach on its history (never attempting it)."""
    running: dict[tuple[str, float], Composition] = {}
    for i, entry in enumerate(entries):
        scope = (entry.accountant, entry.delta)
        if scope not in running:
            earlier = (e.event for e in entries[:i])
            running[scope] = get_accountant(entry.accountant).compose(earlier, entry.delta)
        running = {s: composition.then(entry.event) for s, composition in running.items()}
        figure = running[scope].figure()
        if figure.accountant != entry.accountant:
            raise LedgerError(
                f"{source}: entry {entry.seq} records a {entry.accountant} figure, out of reach "
                f"on its history ({len(running[scope].history)} events after merging), where "
                f"the site records {figure.accountant}'s"
            )
        again = figure.epsilon
        recorded = math.inf if entry.epsilon is None else entry.epsilon
        if not math.isclose(again, recorded, rel_tol=1e-9, abs_tol=1e-12):
            raise LedgerError(
                f"{source}: entry {entry.seq} records epsilon {recorded}, replaying its history "
                f"gives {again}"
            )


def _check_chain(entries: Sequence[LedgerEntry]) -> None:
    """The memo's keys stand for whole prefixes only along a hash chain: a list that is not
    one (a selection, a reordering) would find a stranger's composition."""
    previous = GENESIS
    for entry in entries:
        if entry.prev != previous:
            raise LedgerError(
                f"entry {entry.seq} does not follow the one before it: compositions are kept "
                "for a verified ledger's entries, in order"
            )
        previous = entry.hash
