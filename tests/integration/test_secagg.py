"""DP + secure aggregation end to end (Flower's simulation engine): same result as DP alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_simulation import simulate


def test_dp_with_secure_aggregation_converges_like_dp_alone(tmp_path: Path) -> None:
    rounds = 3
    common = ("num-sites=3", f"num-server-rounds={rounds}", 'partitioner="iid"', "seed=3")
    proc = simulate(tmp_path, "secagg", *common, "secagg=true")
    simulate(tmp_path, "plain", *common, "secagg=false")
    secure = json.loads((tmp_path / "secagg" / "metrics.json").read_text())
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert "secure aggregation on (SecAgg+)" in proc.stdout + proc.stderr
    assert f"secagg: round {rounds}, sum of 3 sites unmasked" in proc.stdout + proc.stderr
    assert abs(secure["final"]["accuracy"] - plain["final"]["accuracy"]) <= 0.02
    assert secure["final"]["epsilon-per-site"] == pytest.approx(plain["final"]["epsilon-per-site"])
    for entry in secure["rounds"]:
        assert entry["rejected"] == {}
        assert all("secagg-clipped" in site for site in entry["sites"].values())
