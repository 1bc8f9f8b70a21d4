"""A site's round outside the engine: its data, calibration cache, policy and ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, Context, RecordDict

from clients.site import SiteGuard
from clients.train import SiteRuntime, privacy_request, train_round
from fedllm import protocol as proto
from fedllm.crypto import SiteKey
from fedllm.errors import ConfigError, LedgerError, PolicyError, PrivacyBudgetExceededError
from fedllm.privacy import PrivacyLedger, SitePolicy
from fedllm.weights import to_arrays


def _context(run_config: dict[str, Any], node_config: dict[str, Any]) -> Context:
    return Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config
    )


def test_a_deployed_site_reads_its_own_file_from_node_config(
    defaults: dict[str, Any], heart_dir: Path
) -> None:
    run_config = {**defaults, "task": "heart-disease"}
    node = {"data-path": str(heart_dir / "processed.va.data"), "site-name": "va-hospital"}
    site = SiteRuntime.from_context(_context(run_config, node))
    assert site.data.name == "va-hospital"
    assert len(site.data.train) + len(site.data.test) == 37  # 40 rows less 3 incomplete


def test_a_simulated_site_refuses_a_federation_of_the_wrong_size(
    defaults: dict[str, Any],
) -> None:
    node = {"partition-id": 0, "num-partitions": 2}
    with pytest.raises(ConfigError, match="runs 2 SuperNodes but `num-sites` is 4"):
        SiteRuntime.from_context(_context(defaults, node))


def _site(run_config: dict[str, Any], folder: Path) -> tuple[SiteRuntime, SiteGuard, Context]:
    context = _context(run_config, {"partition-id": 1, "num-partitions": 4})
    site = SiteRuntime.from_context(context)
    return site, SiteGuard.simulated(folder, privacy_request(site.cfg)), context


def _arrays(site: SiteRuntime) -> ArrayRecord:
    return to_arrays(site.task.build_model(site.cfg, tuple(site.data.train.x.shape[1:])))


def test_rounds_accumulate_epsilon_in_the_ledger_and_refuse_past_the_planned_schedule(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    run_config = {**defaults, "num-server-rounds": 2, "accountant": "rdp"}
    site, guard, context = _site(run_config, tmp_path / "site")
    arrays = _arrays(site)
    first = train_round(site, guard, arrays, 1, "run-a", context.state).metrics
    second = train_round(site, guard, arrays, 2, "run-a", context.state).metrics
    assert 0 < first[proto.EPSILON] < second[proto.EPSILON] <= 1.0  # type: ignore[operator]
    assert first[proto.NOISE_MULTIPLIER] == second[proto.NOISE_MULTIPLIER]  # calibrated once
    entries = PrivacyLedger(tmp_path / "site" / "ledger.jsonl").replay()
    # The example count, released once (noised) before the first round's training.
    assert [(e.run_id, e.round, e.kind) for e in entries] == [
        ("run-a", 1, "count"),
        ("run-a", 1, "train"),
        ("run-a", 2, "train"),
    ]
    assert entries[-1].epsilon == second[proto.SITE_EPSILON] == second[proto.EPSILON]
    assert first[proto.NUM_EXAMPLES] == second[proto.NUM_EXAMPLES] == entries[0].value
    with pytest.raises(PrivacyBudgetExceededError, match="above its target-epsilon 1.0"):
        train_round(site, guard, arrays, 3, "run-a", context.state)  # never planned
    assert len(guard.ledger.entries()) == 3  # a refused round spends nothing


def test_a_second_run_starts_from_what_the_first_spent(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    run_config = {**defaults, "num-server-rounds": 2, "accountant": "rdp"}
    site, guard, context = _site(run_config, tmp_path / "site")
    for r in (1, 2):
        train_round(site, guard, _arrays(site), r, "run-a", context.state)
    site, guard, context = _site(run_config, tmp_path / "site")  # a restart, a new run
    with pytest.raises(
        PrivacyBudgetExceededError, match="over 3 ledger entries .* max-epsilon 1.0"
    ):
        train_round(site, guard, _arrays(site), 1, "run-b", context.state)
    assert [e.run_id for e in guard.ledger.entries()] == ["run-a"] * 3


def test_a_run_asking_for_weaker_privacy_than_the_site_policy_is_refused(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    SitePolicy(max_epsilon=0.5, delta=1e-5).write(tmp_path / "site" / "policy.toml")
    site, guard, context = _site({**defaults, "accountant": "rdp"}, tmp_path / "site")
    with pytest.raises(PolicyError, match="target-epsilon 1.0 is above the site's max-epsilon"):
        train_round(site, guard, _arrays(site), 1, "run-a", context.state)
    assert guard.ledger.entries() == []


def test_a_tampered_ledger_stops_training_naming_the_entry(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    run_config = {**defaults, "num-server-rounds": 3, "accountant": "rdp"}
    site, guard, context = _site(run_config, tmp_path / "site")
    for r in (1, 2):
        train_round(site, guard, _arrays(site), r, "run-a", context.state)
    path = tmp_path / "site" / "ledger.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"round":1', b'"round":9'))
    with pytest.raises(LedgerError, match="entry 1 .* does not match its hash"):
        train_round(site, guard, _arrays(site), 3, "run-a", context.state)


def test_a_deployed_site_without_its_privacy_files_refuses(
    defaults: dict[str, Any], heart_dir: Path
) -> None:
    node = {"data-path": str(heart_dir / "processed.va.data"), "ledger-path": "/x/ledger.jsonl"}
    with pytest.raises(PolicyError, match="lacks `policy-path`, `site-key`"):
        SiteGuard.deployed(_context({**defaults, "task": "heart-disease"}, node))


def test_a_deployed_site_trains_under_its_own_policy_ledger_and_key(
    defaults: dict[str, Any], heart_dir: Path, tmp_path: Path
) -> None:
    SitePolicy(max_epsilon=2.0, delta=1e-5, accountants=("rdp",)).write(tmp_path / "policy.toml")
    key = SiteKey.generate(tmp_path / "site-key.pem")
    node = {
        "data-path": str(heart_dir / "processed.cleveland.data"),
        "site-name": "cleveland",
        "policy-path": str(tmp_path / "policy.toml"),
        "ledger-path": str(tmp_path / "ledger.jsonl"),
        "site-key": str(tmp_path / "site-key.pem"),
    }
    run_config = {**defaults, "task": "heart-disease", "accountant": "rdp"}
    context = _context(run_config, node)
    site = SiteRuntime.from_context(context)
    guard = SiteGuard.deployed(context)
    metrics = train_round(site, guard, _arrays(site), 1, "run-a", context.state).metrics
    entries = PrivacyLedger(tmp_path / "ledger.jsonl").read(key.public).entries
    assert [(e.site, e.round, e.kind) for e in entries] == [
        ("cleveland", 1, "count"),
        ("cleveland", 1, "train"),
    ]
    assert entries[-1].epsilon == metrics[proto.SITE_EPSILON]


def _update(run_config: dict[str, Any], folder: Path, server_round: int = 1) -> dict[str, Any]:
    site, guard, context = _site(run_config, folder)
    update = train_round(site, guard, _arrays(site), server_round, "run-a", context.state).update
    return update.to_numpy_ndarrays()  # type: ignore[return-value]


def test_two_sites_with_the_same_public_config_and_data_draw_different_noise(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    """The production path: identical run config (seed included) and data, two trainings:
    the updates differ, so the coordinator cannot regenerate the noise from what it sent."""
    run_config = {**defaults, "num-server-rounds": 2, "accountant": "rdp"}
    a = _update(run_config, tmp_path / "a")
    b = _update(run_config, tmp_path / "b")
    assert all((x != y).any() for x, y in zip(a, b, strict=True))


def test_reproducible_noise_is_refused_by_a_site_policy_that_does_not_allow_it(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    SitePolicy(max_epsilon=1.0, delta=1e-5).write(tmp_path / "site" / "policy.toml")
    run_config = {**defaults, "accountant": "rdp", "reproducible-noise": True}
    site, guard, context = _site(run_config, tmp_path / "site")
    with pytest.raises(PolicyError, match="reproducible-noise .* the site policy forbids it"):
        train_round(site, guard, _arrays(site), 1, "run-a", context.state)
    assert guard.ledger.entries() == []


def test_reproducible_noise_where_the_policy_allows_it_repeats_the_update(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    run_config = {**defaults, "accountant": "rdp", "reproducible-noise": True}
    a = _update(run_config, tmp_path / "a")
    b = _update(run_config, tmp_path / "b")
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_a_replay_of_the_ledger_by_dp_accounting_matches_the_reported_epsilon(
    defaults: dict[str, Any], tmp_path: Path, accountant: str
) -> None:
    """What a site reports after its rounds, against Google's dp_accounting replaying the
    events its ledger recorded (an implementation independent of Opacus): PLD for PRV, RDP
    for RDP. The report may be conservative, by at most 1% (plus PRV's additive eps_error)."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.rdp import RdpAccountant

    run_config = {**defaults, "num-server-rounds": 3, "accountant": accountant}
    site, guard, context = _site(run_config, tmp_path / "site")
    reported = 0.0
    for server_round in (1, 2, 3):
        result = train_round(site, guard, _arrays(site), server_round, "run-a", context.state)
        reported = float(result.metrics[proto.EPSILON])  # type: ignore[arg-type]
    entries = guard.ledger.entries()
    reference = (
        PLDAccountant(value_discretization_interval=1e-4)
        if accountant == "prv"
        else RdpAccountant()
    )
    for e in entries:
        step = dp_accounting.PoissonSampledDpEvent(
            e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
        )
        reference.compose(dp_accounting.SelfComposedDpEvent(step, e.steps))
    independent = reference.get_epsilon(entries[-1].delta)
    slack = 0.01 if accountant == "prv" else 0.0  # Opacus's PRV adds its eps_error
    assert independent * 0.999 <= reported <= independent * 1.01 + slack, (reported, independent)
