"""The run's summary reports the site-level (client DP) epsilon beside the record-level one,
and why a run stopped on the site-level budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedllm import metrics as m
from fedllm import protocol as proto
from fedllm.metrics import RunMetrics
from fedllm.report import final_table, write_report


def test_site_level_epsilon_and_its_stop_are_reported(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    config = {**defaults, "client-dp": True, "client-epsilon": 6.0, "client-delta": 1e-3}
    record = RunMetrics(tmp_path / "metrics.json", config, 1e-5)
    for server_round, (eps, site_eps) in enumerate([(0.5, 4.4), (0.7, 6.0)], start=1):
        record.add_round(
            {
                "round": server_round,
                proto.ACCURACY: 0.9,
                proto.EPSILON: {"site-0": eps},
                m.CLIENT_EPSILON: site_eps,
            }
        )
    record.stop(3, "round 3 would take the site-level epsilon from 6.0000 to 7.1000", {})
    summary = record.to_dict()
    assert summary["final"][m.CLIENT_EPSILON] == 6.0
    assert summary["final"][m.CLIENT_DELTA] == 1e-3
    table = final_table(summary)
    assert "site-0" in table and "0.7000" in table
    assert "site-level (client DP)          6.0000    6.0000    0.0010" in table
    assert "stopped in round 3: round 3 would take the site-level epsilon" in table
    write_report(summary, tmp_path / "report.md")
    assert "Site-level (client) DP: (6.0, 0.001)-DP" in (tmp_path / "report.md").read_text()


def test_a_reproducible_noise_run_says_first_that_it_is_not_private(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    record = RunMetrics(tmp_path / "metrics.json", {**defaults, "reproducible-noise": True}, 1e-5)
    record.add_round({"round": 1, proto.ACCURACY: 0.9, proto.EPSILON: {"site-0": 0.5}})
    summary = record.to_dict()
    assert final_table(summary).startswith("NOT PRIVATE: reproducible-noise was on")
    write_report(summary, tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text().startswith("**NOT PRIVATE: reproducible-noise")
    secret = RunMetrics(tmp_path / "other.json", dict(defaults), 1e-5)
    secret.add_round({"round": 1, proto.ACCURACY: 0.9, proto.EPSILON: {"site-0": 0.5}})
    assert "NOT PRIVATE" not in final_table(secret.to_dict())


def test_metrics_and_report_say_where_each_training_value_came_from(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    from fedllm.config import RunConfig

    cfg = RunConfig.from_flower({**defaults, "task": "csv", "learning-rate": 2.0})
    record = RunMetrics(tmp_path / "metrics.json", cfg.to_flower(), 1e-5)
    record.config_sources = cfg.config_sources()
    record.add_round({"round": 1, proto.ACCURACY: 0.9, proto.EPSILON: {"site-0": 0.5}})
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["config"]["batch-size"] == 128 and written["config"]["learning-rate"] == 2.0
    assert written["config-sources"]["batch-size"] == "global"
    assert written["config-sources"]["learning-rate"] == "user"
    write_report(written, tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert "- `learning-rate` = `2.0` (set by the user)" in report
    assert "- `batch-size` = `128` (global default)" in report
    assert "- `target-epsilon` = `1.0`\n" in report  # not a task-decided key: no source


def test_the_report_states_the_adjacency_and_every_release_besides_dp_sgd(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        **defaults,
        "feature-scaling": "federated",
        "site-evaluations": 2,
        "num-server-rounds": 3,
    }
    record = RunMetrics(tmp_path / "metrics.json", config, 1e-5)
    record.releases["feature-statistics"] = ["site-0", "site-2"]
    record.add_round({"round": 1, proto.ACCURACY: 0.9, proto.EPSILON: {"site-0": 0.5}})
    write_report(record.to_dict(), tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert "**Adjacency**: add/remove-one record" in report
    assert "example count, once per run, with noise of std 20.0" in report
    assert "the global models of the last 2 round(s)" in report
    assert "site-0, site-2 released the count, sum and sum of squares" in report
    assert "not covered by the epsilon" in report and "No training loss" in report
    plain = RunMetrics(tmp_path / "plain.json", {**defaults, "dp": False}, None)
    plain.add_round({"round": 1, proto.ACCURACY: 0.9, proto.EPSILON: {"site-0": None}})
    write_report(plain.to_dict(), tmp_path / "plain.md")
    assert "in the clear" in (tmp_path / "plain.md").read_text()
