"""Ledgers written by the real ledger code, for the tests of the ledger, the CLI and reports."""

from __future__ import annotations

from fedllm.privacy import DPEvent, PrivacyLedger

EVENT = DPEvent(1.1, 0.05, 40)


def spend(ledger: PrivacyLedger, server_round: int, event: DPEvent = EVENT, run: str = "7") -> None:
    """Record one round of DP training, as a site does after training it."""
    with ledger.locked() as state:
        ledger.append(
            state,
            site="site-0",
            run_id=run,
            server_round=server_round,
            event=event,
            clip_norm=1.0,
            delta=1e-5,
            accountant="rdp",
        )
