"""The site's privacy ledger: durable, hash-chained, signed; tampering and removals detected."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from fedllm.crypto import SiteKey
from fedllm.errors import LedgerError, PrivacyBudgetExceededError
from fedllm.privacy import DPEvent, LedgerEntry, PrivacyLedger, chain, check_budget
from tests.ledgers import EVENT, long_ledger, spend


def _ledger(folder: Path, rounds: int = 3, key: SiteKey | None = None) -> PrivacyLedger:
    key = key or SiteKey.generate(folder / "site-key.pem")
    ledger = PrivacyLedger(folder / "ledger.jsonl", key)
    for r in range(1, rounds + 1):
        spend(ledger, r)
    return ledger


def _lines(ledger: PrivacyLedger) -> list[bytes]:
    return ledger.path.read_bytes().splitlines(keepends=True)


def test_entries_survive_a_new_process_and_replay_to_the_same_epsilon(tmp_path: Path) -> None:
    _ledger(tmp_path)
    again = PrivacyLedger(tmp_path / "ledger.jsonl")  # read-only: no key
    entries = again.replay()
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.round for e in entries] == [1, 2, 3]
    assert entries[0].epsilon < entries[1].epsilon < entries[2].epsilon  # type: ignore[operator]
    assert entries[1].prev == entries[0].hash


@pytest.mark.parametrize("position", [5, 40, 100, 250, 400, -3])
def test_flipping_any_byte_is_detected(tmp_path: Path, position: int) -> None:
    ledger = _ledger(tmp_path)
    data = bytearray(ledger.path.read_bytes())
    data[position] ^= 0x01
    ledger.path.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match=r"entry \d"):
        ledger.read()


def test_editing_an_entry_names_it(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    lines = _lines(ledger)
    lines[1] = lines[1].replace(b'"steps":40', b'"steps":4')
    ledger.path.write_bytes(b"".join(lines))
    with pytest.raises(LedgerError, match="entry 2 .* does not match its hash"):
        ledger.read()


def test_deleting_a_middle_entry_is_detected(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    lines = _lines(ledger)
    ledger.path.write_bytes(lines[0] + lines[2])
    with pytest.raises(LedgerError, match="entry 2 .* deleted, inserted or reordered"):
        ledger.read()


def test_deleting_the_last_entries_is_detected_by_the_signed_head(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.path.write_bytes(b"".join(_lines(ledger)[:1]))
    with pytest.raises(LedgerError, match="signed head records 3 entries"):
        ledger.read()


def test_reordering_entries_is_detected(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    lines = _lines(ledger)
    ledger.path.write_bytes(lines[1] + lines[0] + lines[2])
    with pytest.raises(LedgerError, match="entry 1 .* reordered"):
        ledger.read()


def test_an_entry_appended_without_the_site_key_is_refused(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    last = ledger.read().entries[-1]
    forged = replace(last, seq=4, round=4, delta=0.5, prev=last.hash, sig=last.sig)
    forged = replace(forged, hash=forged.digest())  # a valid chain link, but not signed
    ledger.path.write_bytes(ledger.path.read_bytes() + forged.line())
    with pytest.raises(LedgerError, match="entry 4 is not signed by the ledger's key"):
        ledger.read()


@pytest.mark.parametrize(
    "edit",
    [
        lambda data: data.replace(b"\n", b"\n\n", 1),  # a blank line inserted
        lambda data: data[:-1],  # the last line cut short
        lambda data: data.replace(b'"clip_norm":1.0', b'"clip_norm":NaN', 1),
        lambda data: data.replace(b'"steps":40', b'"steps":"40"', 1),
    ],
)
def test_a_malformed_ledger_is_a_ledger_error_not_a_crash(
    tmp_path: Path, edit: Callable[[bytes], bytes]
) -> None:
    ledger = _ledger(tmp_path)
    ledger.path.write_bytes(edit(ledger.path.read_bytes()))
    with pytest.raises(LedgerError, match="edited|cut"):
        ledger.read()


def test_a_deleted_head_is_detected(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.head_path.unlink()
    with pytest.raises(LedgerError, match="signed head is missing"):
        ledger.read()


def test_a_head_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    other = SiteKey.generate(tmp_path / "other.pem")
    forged = PrivacyLedger(tmp_path / "forged.jsonl", other)
    forged.path.write_bytes(ledger.path.read_bytes())
    forged._write_head(other, 3, ledger.read().entries[-1].hash)
    ledger.head_path.write_bytes(forged.head_path.read_bytes())
    with pytest.raises(LedgerError, match="not by the site key"):
        ledger.read()


def test_a_crash_between_ledger_and_head_keeps_the_spend(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, rounds=2)
    head_before = ledger.head_path.read_bytes()
    spend(ledger, 3)
    ledger.head_path.write_bytes(head_before)  # as if killed after the ledger's rename
    state = ledger.read()
    assert state.head_pending and len(state.entries) == 3  # the sent spend is kept
    spend(ledger, 4)  # the next append re-signs the head over everything
    state = ledger.read()
    assert not state.head_pending and len(state.entries) == 4


def test_the_budget_check_refuses_past_the_maximum_and_names_the_spend(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, rounds=2)
    with ledger.locked() as state:
        spent = state.entries[-1].epsilon
        with pytest.raises(PrivacyBudgetExceededError, match=f"epsilon is {spent:.4f}"):
            check_budget(state, EVENT, 1e-5, "rdp", max_epsilon=spent + 1e-3)  # type: ignore[operator]


def test_appending_needs_the_site_key(tmp_path: Path) -> None:
    _ledger(tmp_path, rounds=1)
    reader = PrivacyLedger(tmp_path / "ledger.jsonl")
    with pytest.raises(LedgerError, match="needs the site's signing key"):
        spend(reader, 2)


def _reference_epsilon(events: list[DPEvent], delta: float) -> float:
    accountant = RDPAccountant()
    for e in events:
        accountant.history.append((e.noise_multiplier, e.sample_rate, e.steps))
    return float(accountant.get_epsilon(delta=delta))


attempts = st.lists(
    st.tuples(
        st.sampled_from([0.6, 0.9, 1.3, 2.5]),  # noise multiplier
        st.sampled_from([0.01, 0.05, 0.2]),  # sampling rate
        st.integers(1, 60),  # steps
        st.booleans(),  # restart the site (a fresh ledger object reads the file) first
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.slow  # 12 generated ledgers, each replayed by an accountant: ~10-15 s
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(attempts=attempts, max_epsilon=st.sampled_from([0.5, 2.0, 8.0]))
def test_the_spend_never_exceeds_the_maximum_and_replays_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    attempts: list[tuple[float, float, int, bool]],
    max_epsilon: float,
) -> None:
    folder = tmp_path_factory.mktemp("site")
    key = SiteKey.generate(folder / "site-key.pem")
    ledger = PrivacyLedger(folder / "ledger.jsonl", key)
    trained = []
    for i, (sigma, rate, steps, restart) in enumerate(attempts, start=1):
        if restart:
            ledger = PrivacyLedger(folder / "ledger.jsonl", SiteKey.load(folder / "site-key.pem"))
        event = DPEvent(sigma, rate, steps)
        with ledger.locked() as state:
            try:
                check_budget(state, event, 1e-5, "rdp", max_epsilon)
            except PrivacyBudgetExceededError:
                continue
            entry = ledger.append(
                state,
                site="s",
                run_id=str(i % 3),
                server_round=i,
                event=event,
                clip_norm=1.0,
                delta=1e-5,
                accountant="rdp",
            )
        trained.append(event)
        assert entry.epsilon is not None and entry.epsilon <= max_epsilon
    entries = PrivacyLedger(folder / "ledger.jsonl").replay()
    assert [e.event for e in entries] == trained
    if trained:
        fresh = _reference_epsilon(trained, 1e-5)
        assert math.isclose(entries[-1].epsilon, fresh, rel_tol=1e-12)  # type: ignore[arg-type]
        assert fresh <= max_epsilon


LONG = 60


@pytest.fixture(scope="module")
def long_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A 60-entry ledger (six runs, three schedules): its bytes and its head's bytes."""
    ledger = long_ledger(tmp_path_factory.mktemp("long"), LONG)
    return ledger.path.read_bytes(), ledger.head_path.read_bytes()


def _edit(lines: list[bytes], k: int) -> list[bytes]:
    edited = lines[k - 1].replace(b'"site":"site-0"', b'"site":"site-1"')
    return [*lines[: k - 1], edited, *lines[k:]]


def _delete(lines: list[bytes], k: int) -> list[bytes]:
    return [*lines[: k - 1], *lines[k:]]


def _swap(lines: list[bytes], k: int) -> list[bytes]:
    k = min(k, len(lines) - 1)
    return [*lines[: k - 1], lines[k], lines[k - 1], *lines[k + 1 :]]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(k=st.integers(1, LONG), change=st.sampled_from([_edit, _delete, _swap]))
def test_any_change_to_a_verified_long_ledger_is_refused_naming_the_first_bad_entry(
    tmp_path_factory: pytest.TempPathFactory,
    long_site: tuple[bytes, bytes],
    k: int,
    change: Callable[[list[bytes], int], list[bytes]],
) -> None:
    data, head = long_site
    folder = tmp_path_factory.mktemp("copy")
    ledger = PrivacyLedger(folder / "ledger.jsonl")
    ledger.path.write_bytes(data)
    ledger.head_path.write_bytes(head)
    assert len(ledger.read().entries) == LONG  # verified once: the next read starts from here
    ledger.path.write_bytes(b"".join(change(data.splitlines(keepends=True), k)))
    if change is _delete and k == LONG:
        expected = f"signed head records {LONG} entries"  # only the head can tell
    else:
        expected = rf"entry {min(k, LONG - 1) if change is _swap else k} \(line"
    with pytest.raises(LedgerError, match=expected):
        ledger.read()


def test_a_read_after_an_append_checks_only_the_new_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = long_ledger(tmp_path, 12)
    ledger.read()
    spend(PrivacyLedger(ledger.path, SiteKey.load(tmp_path / "site-key.pem")), 13)  # a writer
    parsed: list[int] = []
    parse = chain._parse

    def counting(data: bytes, source: str, before: tuple[LedgerEntry, ...] = ()) -> Any:
        parsed.append(data.count(b"\n"))
        return parse(data, source, before)

    monkeypatch.setattr(chain, "_parse", counting)
    assert [e.seq for e in ledger.read().entries] == list(range(1, 14))
    assert parsed == [0]  # the append left its own bytes as the verified ones
    ledger.path.write_bytes(ledger.path.read_bytes().replace(b'"round":1,', b'"round":9,', 1))
    with pytest.raises(LedgerError, match="entry 1 .* does not match its hash"):
        ledger.read()
    assert parsed[-1] == 13  # a changed prefix: the whole chain again


def test_a_head_re_signed_by_another_key_is_refused_even_after_a_verified_read(
    tmp_path: Path,
) -> None:
    ledger = _ledger(tmp_path)
    reader = PrivacyLedger(ledger.path)  # unpinned, as an officer without the site key
    reader.read()
    other = SiteKey.generate(tmp_path / "other.pem")
    ledger._write_head(other, 3, reader.read().entries[-1].hash)
    with pytest.raises(LedgerError, match="entry 1 is not signed by the ledger's key"):
        reader.read()
