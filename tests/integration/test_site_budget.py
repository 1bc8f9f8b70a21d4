"""Sites enforce their own budgets in a real simulation: a site whose ledger already holds
spend from earlier work stops training when its budget runs out; the others go on, and when
no sampled site can train the run stops cleanly with a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedllm.crypto import SiteKey
from fedllm.privacy import DPEvent, DPSchedule, PrivacyLedger, SitePolicy, calibrate_noise
from tests.integration.test_simulation import simulate

# Starts Flower's simulation engine (Ray): left out of the quick loop, `-m "not slow"`.
pytestmark = pytest.mark.slow

RUN = ("num-sites=3", "num-server-rounds=4", 'partitioner="iid"', 'accountant="rdp"')


def _earlier_spend(folder: Path, rounds_worth: float) -> None:
    """A site that already spent ``rounds_worth`` rounds of this run's budget elsewhere."""
    SitePolicy(max_epsilon=1.0, delta=1e-5, accountants=("rdp",)).write(folder / "policy.toml")
    # ~150 training rows a site, batch 128: 2 Poisson steps a round at q = 1/2.
    schedule = DPSchedule.for_site(150, 128, 1, 4)
    sigma = calibrate_noise(1.0, 1e-5, schedule, "rdp")
    ledger = PrivacyLedger(folder / "ledger.jsonl", SiteKey.generate(folder / "site-key.pem"))
    with ledger.locked() as state:
        steps = round(rounds_worth * schedule.steps_per_round)
        ledger.append(
            state,
            site=folder.name,
            run_id="earlier-study",
            server_round=1,
            event=DPEvent(sigma, schedule.sample_rate, steps),
            clip_norm=0.5,
            delta=1e-5,
            accountant="rdp",
        )


def test_a_site_whose_budget_runs_out_stops_and_the_others_finish(tmp_path: Path) -> None:
    ledgers = tmp_path / "ledgers"
    _earlier_spend(ledgers / "site-1", rounds_worth=1.5)
    simulate(tmp_path, "run", *RUN, f'ledger-dir="{ledgers}"')
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    trained = {r["round"]: set(r["sites"]) for r in metrics["rounds"]}
    refused = {r["round"]: r["refused"] for r in metrics["rounds"]}
    assert trained == {1: {"site-0", "site-1", "site-2"}, 2: {"site-0", "site-1", "site-2"},
                       3: {"site-0", "site-2"}, 4: {"site-0", "site-2"}}  # fmt: skip
    assert set(refused[3]) == set(refused[4]) == {"site-1"}
    assert refused[3]["site-1"]["kind"] == "budget"
    assert "max-epsilon 1.0" in refused[3]["site-1"]["reason"]
    assert metrics["final"]["stopped"] is None and metrics["final"]["rounds-completed"] == 4
    for site in ("site-0", "site-1", "site-2"):
        entries = PrivacyLedger(ledgers / site / "ledger.jsonl").replay()
        assert entries[-1].epsilon is not None and entries[-1].epsilon <= 1.0
    assert metrics["rounds"][1]["sites"]["site-1"]["site-epsilon"] <= 1.0


def test_the_run_stops_cleanly_when_no_sampled_site_has_budget_left(tmp_path: Path) -> None:
    ledgers = tmp_path / "ledgers"
    for site in ("site-0", "site-1", "site-2"):
        _earlier_spend(ledgers / site, rounds_worth=2.5)
    proc = simulate(tmp_path, "run", *RUN, f'ledger-dir="{ledgers}"')
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1]
    stopped = metrics["final"]["stopped"]
    assert stopped["round"] == 2
    assert {r["kind"] for r in stopped["refused"].values()} == {"budget"}
    assert set(stopped["refused"]) == {"site-0", "site-1", "site-2"}
    assert "stopped in round 2: no sampled site could train" in proc.stdout
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "report.md").is_file()
