"""What a deployed site releases besides its DP update, against a coordinator that asks for
more: feature statistics and evaluations its policy does not allow, evaluations past its
policy's bound, and whether anything it sends follows its exact example count.

The real ClientApp handlers of a deployed site (its own data file, policy, ledger and key);
only the transport is a function call."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients.client_app import evaluate_global, feature_moments, train
from clients.site import SiteGuard
from clients.train import SiteRuntime, privacy_request, train_round
from fedllm import protocol as proto
from fedllm.crypto import SiteKey
from fedllm.privacy import PrivacyLedger, SitePolicy
from fedllm.privacy.chain import COUNT
from fedllm.privacy.releases import COUNT_SENSITIVITY, gaussian_event
from fedllm.tasks import SiteData, Split
from fedllm.weights import to_arrays
from tests.conftest import write_heart_center

REFUSAL_ONLY = {proto.METRICS, proto.SITE, proto.REFUSAL}


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """What a ClientApp process knows about itself (Flower sets it before the app runs)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 7
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _site(tmp_path: Path, defaults: dict[str, Any], policy: SitePolicy, **run: Any) -> Context:
    """A deployed heart-disease site with ``policy`` and a run config of ``run`` values (in the
    clear: the policy allows plain updates)."""
    write_heart_center(tmp_path / "processed.x.data", 80, 0)
    replace(policy, require_secure_aggregation=False).write(tmp_path / "policy.toml")
    SiteKey.generate(tmp_path / "site-key.pem")
    run_config = {**defaults, "task": "heart-disease", "num-sites": 1, "min-available-nodes": 1,
                  "secagg": False, "accountant": "rdp",
                  **{k.replace("_", "-"): v for k, v in run.items()}}  # fmt: skip
    node_config = {
        "data-path": str(tmp_path / "processed.x.data"),
        "site-name": "hospital-x",
        "policy-path": str(tmp_path / "policy.toml"),
        "ledger-path": str(tmp_path / "ledger.jsonl"),
        "site-key": str(tmp_path / "site-key.pem"),
    }
    return Context(7, 7, node_config, RecordDict(), run_config)


def _message(context: Context, kind: str, server_round: int = 1, **config: Any) -> Message:
    site = SiteRuntime.from_context(context)
    arrays = to_arrays(site.task.build_model(site.cfg, tuple(site.data.train.x.shape[1:])))
    values = {proto.SERVER_ROUND: server_round, **config}
    content = RecordDict({proto.ARRAYS: arrays, proto.CONFIG: ConfigRecord(values)})
    return Message(content=content, dst_node_id=7, message_type=kind)


def _ledger(tmp_path: Path) -> list[str]:
    path = tmp_path / "ledger.jsonl"
    return [e.kind for e in PrivacyLedger(path).entries()] if path.exists() else []


def _refused(reply: Message, kind: str, reason: str) -> None:
    assert not reply.has_error()
    assert set(reply.content) == REFUSAL_ONLY  # the refusal and nothing else
    refusal = reply.content.config_records[proto.REFUSAL]
    assert refusal[proto.REFUSAL_KIND] == kind
    assert reason in str(refusal[proto.REFUSAL_REASON])


def test_feature_statistics_the_policy_does_not_allow_are_refused(
    tmp_path: Path, defaults: dict[str, Any]
) -> None:
    """The server asks for per-feature count, sum and sum of squares; the site's policy (as
    `fedllm site init` writes it) does not allow them."""
    context = _site(tmp_path, defaults, SitePolicy(max_epsilon=1.0, delta=1e-5))
    reply = feature_moments(Message(RecordDict(), dst_node_id=7, message_type="query"), context)
    _refused(reply, "policy", "allow-feature-statistics")
    assert _ledger(tmp_path) == []


def test_feature_statistics_the_policy_allows_are_sent_and_recorded_once_per_run(
    tmp_path: Path, defaults: dict[str, Any]
) -> None:
    policy = SitePolicy(max_epsilon=1.0, delta=1e-5, allow_feature_statistics=True)
    context = _site(tmp_path, defaults, policy, feature_scaling="federated")
    for _ in range(2):
        reply = feature_moments(Message(RecordDict(), dst_node_id=7, message_type="query"), context)
        assert set(reply.content.metric_records[proto.METRICS]) == {
            proto.FEATURE_COUNT,
            proto.FEATURE_SUM,
            proto.FEATURE_SUM_SQ,
        }
    assert _ledger(tmp_path) == ["statistics"]
    assert PrivacyLedger(tmp_path / "ledger.jsonl").entries()[0].epsilon == 0.0  # not in it


def test_an_evaluation_under_dp_the_policy_does_not_allow_is_refused(
    tmp_path: Path, defaults: dict[str, Any]
) -> None:
    context = _site(tmp_path, defaults, SitePolicy(max_epsilon=1.0, delta=1e-5))
    reply = evaluate_global(_message(context, "evaluate"), context)
    _refused(reply, "policy", "max-evaluations")
    assert _ledger(tmp_path) == []


def test_evaluations_the_policy_allows_are_noised_charged_and_bounded(
    tmp_path: Path, defaults: dict[str, Any]
) -> None:
    """Two allowed; the run plans them; a third is refused. Each is two noised sums (the
    examples' accuracies, the count) and one Gaussian release in the site's epsilon."""
    policy = SitePolicy(max_epsilon=1.0, delta=1e-5, max_evaluations=2)
    context = _site(tmp_path, defaults, policy, site_evaluations=2)
    spent = []
    for server_round in (1, 2):
        reply = evaluate_global(_message(context, "evaluate", server_round), context)
        metrics = reply.content.metric_records[proto.METRICS]
        assert set(metrics) == {proto.CORRECT, proto.NUM_EXAMPLES}
        assert proto.ACCURACY not in metrics and proto.LOSS not in metrics
        spent.append(PrivacyLedger(tmp_path / "ledger.jsonl").entries()[-1].epsilon)
    assert 0 < spent[0] < spent[1] < 1.0
    reply = evaluate_global(_message(context, "evaluate", 3), context)
    _refused(reply, "policy", "allows 2 per run (max-evaluations) and this run had 2")
    assert _ledger(tmp_path) == ["evaluate", "evaluate"]


def test_a_train_message_asking_for_an_unallowed_evaluation_is_refused_before_any_release(
    tmp_path: Path, defaults: dict[str, Any]
) -> None:
    context = _site(tmp_path, defaults, SitePolicy(max_epsilon=1.0, delta=1e-5))
    message = _message(context, "train", 2, **{proto.EVALUATE_INCOMING: True})
    _refused(train(message, context), "policy", "max-evaluations")
    assert _ledger(tmp_path) == []  # not even the example count


def test_a_run_planning_more_site_evaluations_than_the_policy_allows_is_refused(
    tmp_path: Path, defaults: dict[str, Any]
) -> None:
    context = _site(tmp_path, defaults, SitePolicy(max_epsilon=1.0, delta=1e-5), site_evaluations=1)
    _refused(train(_message(context, "train"), context), "policy", "plans 1 evaluation(s)")
    assert _ledger(tmp_path) == []


def _with_one_more_training_row(site: SiteRuntime) -> SiteRuntime:
    rows = site.data.train
    larger = Split(torch.cat([rows.x, rows.x[:1]]), torch.cat([rows.y, rows.y[:1]]))
    return replace(site, data=SiteData(site.data.name, larger, site.data.test))


def test_nothing_sent_follows_the_exact_count_beyond_the_released_one(
    tmp_path: Path, defaults: dict[str, Any]
) -> None:
    """Neighbouring data sets (one training row more or fewer) whose count release gave the
    same value: every metric a DP train reply carries, and the schedule and noise DP-SGD
    runs at, are the same; the update differs only through DP-SGD itself. (Derived from the
    exact counts, 60 and 61 rows at batch 10 straddle a step: 6 steps against 7.)"""
    policy = SitePolicy(max_epsilon=1.0, delta=1e-5)
    context = _site(tmp_path, defaults, policy, batch_size=10)
    base = SiteRuntime.from_context(context)
    assert len(base.data.train) == 60
    sent, schedules = [], []
    for name, site in (("a", base), ("b", _with_one_more_training_row(base))):
        folder = tmp_path / name
        guard = SiteGuard.simulated(folder, privacy_request(site.cfg))
        with guard.ledger.locked() as ledger:  # the same released count: 70
            guard.ledger.append(
                ledger,
                site="hospital-x",
                run_id="run-a",
                server_round=1,
                event=gaussian_event(site.cfg.count_noise),
                clip_norm=COUNT_SENSITIVITY,
                delta=1e-5,
                accountant="rdp",
                kind=COUNT,
                value=70.0,
            )
        arrays = to_arrays(site.task.build_model(site.cfg, tuple(site.data.train.x.shape[1:])))
        result = train_round(site, guard, arrays, 1, "run-a", RecordDict())
        sent.append(dict(result.metrics))
        schedules.append(
            [(e.steps, e.sample_rate, e.noise_multiplier) for e in guard.ledger.entries()]
        )
    assert sent[0] == sent[1]
    assert sent[0][proto.NUM_EXAMPLES] == 70
    assert schedules[0] == schedules[1]
    assert schedules[0][-1][:2] == (7, 1 / 7)  # ceil(70 / 10) steps at rate 1 / 7


def test_a_data_refusal_names_the_problem_without_the_values_it_found(
    tmp_path: Path, defaults: dict[str, Any]
) -> None:
    """A malformed cell of the site's own file: the server learns the file, line and kind of
    problem, never the cell (the site's log has it)."""
    context = _site(tmp_path, defaults, SitePolicy(max_epsilon=1.0, delta=1e-5))
    data = tmp_path / "processed.x.data"
    lines = data.read_text().splitlines()
    cells = lines[3].split(",")
    cells[0] = "secret-age-63"
    lines[3] = ",".join(cells)
    data.write_text("\n".join(lines) + "\n")
    arrays = RecordDict({proto.CONFIG: ConfigRecord({proto.SERVER_ROUND: 1})})
    reply = train(Message(content=arrays, dst_node_id=7, message_type="train"), context)
    _refused(reply, "data", f"{data}:4: non-numeric value")
    assert "secret-age-63" not in str(reply.content.config_records[proto.REFUSAL])
