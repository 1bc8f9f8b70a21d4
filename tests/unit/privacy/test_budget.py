"""What a site has spent, kept per ledger head: each round composes only its own event onto
the composition of the verified ledger, and the result equals a fresh replay of the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedllm.crypto import SiteKey
from fedllm.errors import LedgerError, PrivacyBudgetExceededError
from fedllm.privacy import DPEvent, PrivacyLedger, check_budget, history_epsilon, spent
from fedllm.privacy import budget as budget_module
from fedllm.privacy.accountants.prv import prv_epsilon
from tests.histories import histories, reference
from tests.ledgers import spend

DELTA = 1e-5


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rounds=histories,
    runs=st.lists(st.sampled_from("ab"), min_size=8, max_size=8),
    restarts=st.lists(st.booleans(), min_size=8, max_size=8),
    accountant=st.sampled_from(["prv", "rdp"]),
)
def test_the_composition_kept_per_head_equals_a_fresh_replay_of_the_ledger(
    tmp_path_factory: pytest.TempPathFactory,
    rounds: list[DPEvent],
    runs: list[str],
    restarts: list[bool],
    accountant: str,
) -> None:
    folder = tmp_path_factory.mktemp("site")
    key = SiteKey.generate(folder / "site-key.pem")
    for i, event in enumerate(rounds):
        if restarts[i]:  # a new process: nothing kept, everything composed from the ledger
            budget_module._COMPOSED.clear()
        ledger = PrivacyLedger(folder / "ledger.jsonl", key)
        entry = spend(ledger, i + 1, event, run=runs[i], accountant=accountant)
        entries = ledger.entries()
        assert entry.epsilon == pytest.approx(reference(rounds[: i + 1], DELTA, accountant), 1e-3)
        site = spent(entries, DELTA, accountant)
        assert site.epsilon() == entry.epsilon
        run_events = [e.event for e in entries if e.run_id == runs[i]]
        run = spent(entries, DELTA, accountant, run_id=runs[i])
        assert run.epsilon() == pytest.approx(reference(run_events, DELTA, accountant), rel=1e-3)
    PrivacyLedger(folder / "ledger.jsonl").replay()  # fresh compositions agree with every entry


def _two_sites(tmp_path: Path) -> tuple[PrivacyLedger, PrivacyLedger]:
    ledgers = []
    for name, event in (("a", DPEvent(1.1, 0.05, 40)), ("b", DPEvent(3.0, 0.05, 40))):
        (tmp_path / name).mkdir()
        ledger = PrivacyLedger(tmp_path / name / "l.jsonl", SiteKey.generate(tmp_path / name / "k"))
        for r in (1, 2):
            spend(ledger, r, event)
        ledgers.append(ledger)
    return ledgers[0], ledgers[1]


def test_two_ledgers_of_equal_length_never_share_a_composition(tmp_path: Path) -> None:
    a, b = _two_sites(tmp_path)  # one process, like a simulation actor serving two sites
    for ledger, sigma in ((a, 1.1), (b, 3.0)):
        entries = ledger.entries()
        fresh = history_epsilon(entries, DELTA, "rdp")
        assert spent(entries, DELTA, "rdp").epsilon() == fresh == entries[-1].epsilon
        assert fresh == pytest.approx(reference([DPEvent(sigma, 0.05, 80)], DELTA, "rdp"))


def test_a_list_that_is_not_the_ledger_s_chain_is_refused(tmp_path: Path) -> None:
    a, _ = _two_sites(tmp_path)
    entries = a.entries()
    with pytest.raises(LedgerError, match="entry 2 does not follow the one before it"):
        spent(entries[1:], DELTA, "rdp")


def test_the_budget_check_decides_by_the_bound_far_from_the_limit(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.jsonl", SiteKey.generate(tmp_path / "k"))
    event = DPEvent(1.1, 0.05, 40)
    spend(ledger, 1, event, accountant="prv")
    with ledger.locked() as state:
        before = prv_epsilon.cache_info()
        check_budget(state, event, DELTA, "prv", max_epsilon=50.0)
        assert prv_epsilon.cache_info() == before  # no PRV evaluation
        near = spent(state.entries, DELTA, "prv").then(event).epsilon()
        check_budget(state, event, DELTA, "prv", max_epsilon=near)  # exactly at the limit
        with pytest.raises(PrivacyBudgetExceededError, match=f"bring it to {near:.4f}"):
            check_budget(state, event, DELTA, "prv", max_epsilon=near * 0.999)
