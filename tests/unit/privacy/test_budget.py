"""What a site has spent, kept per ledger head: each round composes only its own event onto
the composition of the verified ledger, and the result equals a fresh replay of the ledger."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedllm.crypto import SiteKey
from fedllm.errors import LedgerError, PrivacyBudgetExceededError
from fedllm.privacy import DPEvent, PrivacyLedger, check_budget, history_epsilon, spent
from fedllm.privacy import budget as budget_module
from fedllm.privacy.accountants import get_accountant
from fedllm.privacy.accountants import pld as pld_module
from fedllm.privacy.accountants import prv as prv_module
from fedllm.privacy.accountants.prv import MAX_PRV_SIZE, prv_epsilon, prv_size
from fedllm.privacy.budget import recorded, replay
from fedllm.privacy.events import merge
from tests.histories import histories, many_runs, reference
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
        by = entry.accountant  # the run's, or pld where prv's exact figure is out of reach
        assert entry.epsilon == pytest.approx(reference(rounds[: i + 1], DELTA, by), 1e-3)
        site = spent(entries, DELTA, accountant).figure()
        assert (site.accountant, site.epsilon) == (by, entry.epsilon)
        run_events = [e.event for e in entries if e.run_id == runs[i]]
        run = spent(entries, DELTA, accountant, run_id=runs[i]).figure()
        assert run.epsilon == pytest.approx(reference(run_events, DELTA, run.accountant), 1e-3)
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


# A site that took part in 50 runs on five schedules in turn (round_overhead's 1000-entry ledger,
# one entry a run), each recorded by the default accountant, then the next run's first round.
RUNS = 51
WRITE_LONG_LEDGER = f"""
import sys
from pathlib import Path
from fedllm.crypto import SiteKey
from fedllm.privacy import PrivacyLedger
from tests.histories import many_runs
from tests.ledgers import spend
folder = Path(sys.argv[1])
ledger = PrivacyLedger(folder / "ledger.jsonl", SiteKey.generate(folder / "site-key.pem"))
for run, event in enumerate(many_runs({RUNS})):
    spend(ledger, 1, event, run=str(run), accountant="prv")
"""
HANG_S = 60  # ~10 s on a shared 2-core machine; attempting PRV on it takes many minutes


@pytest.fixture(scope="module")
def long_ledger(tmp_path_factory: pytest.TempPathFactory) -> PrivacyLedger:
    """Written in a child process, so that a site hanging on its accounting fails the test."""
    folder = tmp_path_factory.mktemp("site")
    root = Path(__file__).resolve().parents[3]
    try:
        subprocess.run(
            [sys.executable, "-c", WRITE_LONG_LEDGER, str(folder)],
            cwd=root,
            check=True,
            timeout=HANG_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{RUNS} entries, the last on a long ledger, not written within {HANG_S} s")
    return PrivacyLedger(folder / "ledger.jsonl")


@pytest.mark.slow  # a child process writing 51 entries, and a replay: ~15 s
def test_a_long_ledger_of_many_schedules_records_pld_figures_that_replay(
    long_ledger: PrivacyLedger,
) -> None:
    entries = long_ledger.entries()
    history = [e.event for e in entries]
    for i, entry in enumerate(entries):  # prv while its exact figure is in reach, then pld
        size = prv_size(tuple(merge(history[: i + 1])), DELTA)
        assert entry.accountant == ("prv" if size <= MAX_PRV_SIZE else "pld")
    assert [e.accountant for e in entries].count("prv") == 7
    pld_module._FIGURES.clear()
    assert entries[-1].epsilon == history_epsilon(entries, DELTA, "pld")  # PLD computed anew
    long_ledger.replay()  # fresh compositions: each entry by the accountant it names


@pytest.mark.slow  # reads the ledger the test above had written
def test_the_budget_check_on_a_long_ledger_still_refuses_past_the_maximum(
    long_ledger: PrivacyLedger,
) -> None:
    event = many_runs(RUNS + 1)[-1]
    with long_ledger.locked() as state:
        after = spent(state.entries, DELTA, "prv").then(event).figure()
        assert after.accountant == "pld"
        check_budget(state, event, DELTA, "prv", max_epsilon=after.epsilon)
        with pytest.raises(PrivacyBudgetExceededError, match=f"bring it to {after.epsilon:.4f}"):
            check_budget(state, event, DELTA, "prv", max_epsilon=after.epsilon - 1e-6)


@pytest.mark.slow  # reads the ledger the test above had written
def test_an_entry_naming_prv_where_prv_is_out_of_reach_is_refused_without_attempting_it(
    long_ledger: PrivacyLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempted: list[int] = []

    def exact(history: tuple[DPEvent, ...], delta: float) -> float:  # Opacus's, watched
        attempted.append(prv_size(history, delta))
        return prv_epsilon(history, delta)

    monkeypatch.setattr(prv_module, "prv_epsilon", exact)
    entries = long_ledger.entries()
    claimed = [*entries[:-1], dataclasses.replace(entries[-1], accountant="prv")]
    with pytest.raises(LedgerError, match=f"entry {RUNS} records a prv figure, out of reach"):
        replay(claimed, "test")
    assert len(attempted) == 7 and max(attempted) <= MAX_PRV_SIZE  # the entries in reach


def test_an_entry_recorded_by_pld_for_a_prv_run_says_why(caplog: pytest.LogCaptureFixture) -> None:
    prv = get_accountant("prv")
    with caplog.at_level("INFO", logger="fedllm.privacy.budget"):
        within = recorded(prv.compose(many_runs(7), DELTA), "prv")  # just within the limit
        assert within.accountant == "prv" and not caplog.text
        past = recorded(prv.compose(many_runs(8), DELTA), "prv")  # just past it
    assert past.accountant == "pld"
    assert "exact prv figure of this site's ledger (8 events after merging) is out of reach" in (
        caplog.text
    )
    assert f"the new entry records pld's figure, epsilon {past.epsilon:.4f}" in caplog.text
