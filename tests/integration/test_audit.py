"""`fedllm audit` end to end on Flower's simulation engine: the product's own run (ServerApp,
ClientApp, DP-SGD with the sites' own noise) with canaries planted at one site.

- soundness: at reported epsilon 1 and 8 no attacker's 95% lower bound exceeds the reported
  epsilon (the tool would exit 3), the headline being the stronger of Steinke et al.'s and the
  f-DP analysis (against the site's own scaled schedule: the black box's rows make it sample);
- power: with clipping but almost no noise (target epsilon 100) the coordinator's bound is at
  least 2, so the soundness checks are not vacuous; without DP (no clipping, no noise, the
  canaries' norm that of an unclipped record) it is at least 2 as well;
- secret noise matters: with `reproducible-noise` the seed-knowing coordinator regenerates the
  noise and its bound lands far above the reported epsilon 1; with secret noise it does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Breast cancer's defaults (4 Dirichlet sites, 10 full-batch rounds), a wide MLP so that 1000
# Dirac canaries have coordinates of their own; secure aggregation off, so the coordinator sees
# the audited site's own updates (the strongest view a server can have) and the runs are short.
COMMON = ("hidden-units=1024", "secagg=false", 'checkpoint="off"')
CANARIES = 1000


def run_audit(out: Path, name: str, attackers: str, *overrides: str) -> dict[str, Any]:
    args = [arg for o in (*COMMON, *overrides) for arg in ("-c", o)]
    proc = subprocess.run(
        [sys.executable, "-m", "fedllm.cli", "audit", *args,
         "-c", f'out-dir="{out}"', "-c", f'run-name="{name}"',
         "--canaries", str(CANARIES), "--attackers", attackers],
        cwd=ROOT, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    path = out / name / "audit.json"
    assert path.is_file(), log
    result: dict[str, Any] = json.loads(path.read_text())
    result["exit-code"], result["log"] = proc.returncode, log
    return result


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audits")


def bounds(result: dict[str, Any]) -> dict[str, float]:
    return {n: a["epsilon-lower-bound"] for n, a in result["attackers"].items()}


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_no_lower_bound_exceeds_the_reported_epsilon(out: Path, target: float) -> None:
    result = run_audit(
        out, f"sound-{target:g}", "black-box,coordinator,seed-knowing", f"target-epsilon={target}"
    )
    reported = result["reported-epsilon"]
    assert reported == pytest.approx(target, rel=0.02)
    assert result["violations"] == [] and result["exit-code"] == 0, result["log"]
    for name, bound in bounds(result).items():
        assert 0.0 <= bound <= reported, (name, bound, reported)
    assert (out / f"sound-{target:g}" / "audit.png").is_file()
    coordinator = result["attackers"]["coordinator"]
    assert coordinator["canaries"] == CANARIES
    # the black box's rows outnumber a batch, so the site samples: its own scaled schedule
    assert result["f-dp"]["family"] == "scaled schedule"
    assert result["f-dp"]["ledger-epsilon"] == pytest.approx(reported, rel=0.02)
    assert coordinator["analyses"]["f-dp"]["level"] + coordinator["analyses"]["steinke"][
        "level"
    ] == pytest.approx(0.05)


def test_without_noise_the_coordinator_finds_the_canaries(out: Path) -> None:
    result = run_audit(out, "power", "coordinator", "target-epsilon=100.0")
    assert bounds(result)["coordinator"] >= 2.0, result["log"]
    assert result["f-dp"]["family"] == "mu-GDP"  # full batch, every release Gaussian
    assert result["f-dp"]["schedule-gdp-epsilon"] <= result["reported-epsilon"]


def test_without_dp_the_coordinator_finds_the_canaries(out: Path) -> None:
    result = run_audit(out, "no-dp", "coordinator", "dp=false")
    assert result["reported-epsilon"] is None, result["log"]  # no DP: nothing is claimed
    assert bounds(result)["coordinator"] >= 2.0, result["log"]
    assert result["exit-code"] == 0


def test_a_seed_knowing_coordinator_breaks_reproducible_noise(out: Path) -> None:
    result = run_audit(
        out, "seeded", "coordinator,seed-knowing", "target-epsilon=1.0", "reproducible-noise=true"
    )
    reported = result["reported-epsilon"]
    found = bounds(result)
    assert found["seed-knowing"] >= 2.5 * reported, result["log"]
    assert found["coordinator"] <= reported  # without the seed the noise still hides them
    assert result["violations"] == [] and result["exit-code"] == 0
    assert result["attackers"]["seed-knowing"]["exceeds-reported"] is True
