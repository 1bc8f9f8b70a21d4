"""Releases besides DP-SGD: the noised example count and noised evaluations (their noise,
checked statistically), the run's release plan in ledger order, the DP-SGD noise calibrated
for the whole plan, and ledger entries of each kind (older ledgers verify unchanged)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedllm.crypto import SiteKey
from fedllm.errors import LedgerError, PrivacyError
from fedllm.privacy import DPEvent, DPSchedule, PrivacyLedger, epsilon
from fedllm.privacy.accounting import calibrate_plan
from fedllm.privacy.chain import COUNT, EVALUATE, STATISTICS
from fedllm.privacy.releases import (
    ReleasePlan,
    gaussian_event,
    noised_scores,
    release_count,
)

DRAWS = 20_000  # the spread of 20k draws is within 2.5% of the truth with overwhelming odds


def test_the_released_count_carries_gaussian_noise_of_the_configured_std() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([release_count(5_000, 20.0, rng) for _ in range(DRAWS)])
    assert np.std(counts) == pytest.approx(20.0, rel=0.025)  # rounding adds 1/12 variance
    assert abs(np.mean(counts) - 5_000) < 0.5
    assert release_count(3, 50.0, np.random.default_rng(1)) >= 1  # a count is never below 1


def test_an_evaluation_carries_gaussian_noise_of_multiplier_times_sqrt_2() -> None:
    rng = np.random.default_rng(2)
    draws = np.array(
        [(s.correct, s.count) for s in (noised_scores(7.0, 10, 3.0, rng) for _ in range(DRAWS))]
    )
    assert np.std(draws, axis=0) == pytest.approx([3.0 * math.sqrt(2)] * 2, rel=0.025)
    assert np.mean(draws, axis=0) == pytest.approx([7.0, 10.0], abs=0.1)


def test_a_release_without_noise_is_refused() -> None:
    with pytest.raises(PrivacyError, match="noise multiplier must be > 0"):
        gaussian_event(0.0)


def test_the_plan_lists_the_releases_in_ledger_order() -> None:
    schedule = DPSchedule(0.25, 4, 3)
    plan = ReleasePlan(schedule, 20.0, 10.0, frozenset({3}), frozenset({3}))
    count, evaluation = DPEvent(20.0, 1.0, 1), DPEvent(10.0, 1.0, 1)
    train = DPEvent(2.0, 0.25, 4)
    assert plan.events(2.0) == [count, DPEvent(2.0, 0.25, 8), evaluation, train, evaluation]
    assert plan.evaluations == 2
    assert ReleasePlan(schedule).events(2.0) == [DPEvent(2.0, 0.25, 12)]


@pytest.mark.parametrize("accountant", ["rdp", "pld", "prv"])
def test_the_noise_calibrated_for_the_plan_spends_the_target_over_the_whole_plan(
    accountant: str,
) -> None:
    schedule = DPSchedule(0.1, 10, 5)
    plan = ReleasePlan(schedule, 20.0, 8.0, frozenset({5}), frozenset({5}))
    sigma = calibrate_plan(1.0, 1e-5, plan, accountant)
    spent = epsilon(plan.events(sigma), 1e-5, accountant)
    assert 0.99 <= spent <= 1.0
    # More was released than DP-SGD alone: the training noise is larger than without.
    assert sigma > calibrate_plan(1.0, 1e-5, ReleasePlan(schedule), accountant)


def test_releases_that_alone_spend_the_target_are_refused_naming_the_keys() -> None:
    plan = ReleasePlan(DPSchedule(0.1, 10, 5), 1.0, 0.5, frozenset(), frozenset({5}))
    with pytest.raises(PrivacyError, match="`count-noise` or `evaluation-noise`"):
        calibrate_plan(1.0, 1e-5, plan, "rdp")


def _ledger(tmp_path: Path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "ledger.jsonl", SiteKey.generate(tmp_path / "key.pem"))


def _count(ledger: PrivacyLedger, state: object, value: float) -> None:
    ledger.append(
        state,  # type: ignore[arg-type]
        site="s",
        run_id="r",
        server_round=1,
        event=DPEvent(20.0, 1.0, 1),
        clip_norm=1.0,
        delta=1e-5,
        accountant="rdp",
        kind=COUNT,
        value=value,
    )


def test_every_kind_of_release_is_one_entry_in_the_same_cumulative_epsilon(
    tmp_path: Path,
) -> None:
    ledger = _ledger(tmp_path)
    events = [
        (COUNT, DPEvent(20.0, 1.0, 1), 117.0),
        (STATISTICS, DPEvent(0.0, 1.0, 0), None),  # outside DP: composes nothing
        ("train", DPEvent(1.1, 0.1, 10), None),
        (EVALUATE, DPEvent(8.0, 1.0, 1), None),
    ]
    with ledger.locked() as state:
        for kind, event, value in events:
            ledger.append(
                state,
                site="s",
                run_id="r",
                server_round=1,
                event=event,
                clip_norm=1.0,
                delta=1e-5,
                accountant="rdp",
                kind=kind,
                value=value,
            )
    entries = PrivacyLedger(ledger.path).replay()
    assert [e.kind for e in entries] == [COUNT, STATISTICS, "train", EVALUATE]
    assert entries[0].value == 117.0 and entries[1].epsilon == entries[0].epsilon
    releases = [DPEvent(20.0, 1.0, 1), DPEvent(1.1, 0.1, 10), DPEvent(8.0, 1.0, 1)]
    assert entries[-1].epsilon == pytest.approx(epsilon(releases, 1e-5, "rdp"))


def test_a_training_entry_is_written_as_before_kinds_existed(tmp_path: Path) -> None:
    """No `kind` or `value` key for a training: ledgers written before verify unchanged."""
    ledger = _ledger(tmp_path)
    with ledger.locked() as state:
        ledger.append(state, site="s", run_id="r", server_round=1, event=DPEvent(1.0, 0.1, 5),
                      clip_norm=1.0, delta=1e-5, accountant="rdp")  # fmt: skip
        _count(ledger, state, 3.0)
    train, count = (json.loads(line) for line in ledger.path.read_text().splitlines())
    assert "kind" not in train and "value" not in train
    assert count["kind"] == COUNT and count["value"] == 3.0


def test_relabelling_a_release_is_detected(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    with ledger.locked() as state:
        _count(ledger, state, 3.0)
    ledger.path.write_text(ledger.path.read_text().replace('"value":3.0', '"value":30.0'))
    with pytest.raises(LedgerError, match="entry 1 .* does not match its hash"):
        ledger.read()
