"""Ledgers written by the real ledger code, for the tests of the ledger, the CLI and reports."""

from __future__ import annotations

from pathlib import Path

from fedllm.crypto import SiteKey
from fedllm.privacy import DPEvent, LedgerEntry, PrivacyLedger

EVENT = DPEvent(1.1, 0.05, 40)


def spend(
    ledger: PrivacyLedger,
    server_round: int,
    event: DPEvent = EVENT,
    run: str = "7",
    accountant: str = "rdp",
) -> LedgerEntry:
    """Record one round of DP training, as a site does after training it."""
    with ledger.locked() as state:
        return ledger.append(
            state,
            site="site-0",
            run_id=run,
            server_round=server_round,
            event=event,
            clip_norm=1.0,
            delta=1e-5,
            accountant=accountant,
        )


def long_ledger(folder: Path, rounds: int, accountant: str = "rdp") -> PrivacyLedger:
    """A site's ledger of ``rounds`` entries over several runs with a few schedules."""
    ledger = PrivacyLedger(folder / "ledger.jsonl", SiteKey.generate(folder / "site-key.pem"))
    schedules = [DPEvent(1.1, 0.05, 40), DPEvent(2.0, 0.2, 5), DPEvent(0.9, 0.01, 100)]
    for r in range(1, rounds + 1):
        run = (r - 1) // 10  # ten rounds a run
        spend(ledger, r, schedules[run % len(schedules)], run=str(run), accountant=accountant)
    return ledger
