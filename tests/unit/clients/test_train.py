"""A site's round outside the engine: its data source, calibration cache and privacy state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from clients.train import SiteRuntime, train_round
from fedllm import metrics as m
from fedllm.errors import ConfigError, PrivacyBudgetExceededError
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


def test_rounds_accumulate_epsilon_and_refuse_past_the_planned_schedule(
    defaults: dict[str, Any],
) -> None:
    run_config = {**defaults, "num-server-rounds": 2, "accountant": "rdp"}
    context = _context(run_config, {"partition-id": 1, "num-partitions": 4})
    site = SiteRuntime.from_context(context)
    arrays = to_arrays(site.task.build_model(site.cfg, tuple(site.data.train.x.shape[1:])))
    _, first = train_round(site, arrays, 1, context.state)
    _, second = train_round(site, arrays, 2, context.state)
    assert 0 < first[m.EPSILON] < second[m.EPSILON] <= 1.0  # type: ignore[operator]
    assert first[m.NOISE_MULTIPLIER] == second[m.NOISE_MULTIPLIER]  # calibrated once, cached
    with pytest.raises(PrivacyBudgetExceededError, match="above the site's target-epsilon 1.0"):
        train_round(site, arrays, 3, context.state)  # a third round was never planned
