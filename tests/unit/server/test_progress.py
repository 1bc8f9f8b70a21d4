"""The per-round progress line stays one line at any number of sites."""

from __future__ import annotations

import statistics
from typing import Any

from fedllm import protocol as proto
from server.progress import CLOSEST, epsilon_summary, progress_line


def _entry(spent: dict[str, float | None], **extra: Any) -> dict[str, Any]:
    return {"round": 3, proto.ACCURACY: 0.9, "auc": 0.95, proto.EPSILON: spent, **extra}


def test_a_few_sites_are_listed_one_by_one(config: Any) -> None:
    line = progress_line(_entry({"site-1": 0.52, "site-0": 0.5}), config(), 27.0)
    assert line == (
        "fedllm round 3/10 (27s): accuracy 0.9000, auc 0.9500 | epsilon site-0 0.500, site-1 0.520"
    )


def test_a_thousand_sites_are_summarized_with_those_closest_to_the_target(config: Any) -> None:
    spent: dict[str, float | None] = {f"site-{i}": 0.001 * i for i in range(1000)}
    spent["site-late"] = None  # trained with DP off: no epsilon to show
    line = progress_line(_entry(spent), config(**{"target-epsilon": 1.0}), 5.0)
    values = [v for v in spent.values() if v is not None]
    assert len(line) < 250
    assert f"median {statistics.median(values):.3f}" in line
    assert "min 0.000 / median 0.499 / max 0.999 over 1000 sites" in line
    assert line.endswith("closest to target 1: site-999 0.999, site-998 0.998, site-997 0.997")
    assert epsilon_summary(spent, 1.0).count("site-") == CLOSEST


def test_many_refusals_are_counted_by_kind(config: Any) -> None:
    refused = {f"site-{i}": {"kind": "budget" if i % 4 else "policy"} for i in range(12)}
    line = progress_line(_entry({"site-99": 0.3}, refused=refused), config(), 1.0)
    assert line.endswith("| refused: 12 sites (budget 9, policy 3)")
    one = {"site-1": {"kind": "budget"}}
    few = progress_line(_entry({"site-99": 0.3}, refused=one), config(), 1.0)
    assert few.endswith("| refused: site-1 (budget)")


def test_without_dp_no_epsilon_is_shown(config: Any) -> None:
    line = progress_line(_entry({"site-0": None}), config(dp=False), 1.0)
    assert line.endswith("| epsilon n/a (DP off)")
