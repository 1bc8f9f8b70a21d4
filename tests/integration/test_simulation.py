"""End to end on Flower's simulation engine (Ray): the real ServerApp, ClientApp and Opacus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedllm.privacy import DPEvent, DPSchedule, epsilon

# Starts Flower's simulation engine (Ray): left out of the quick loop, `-m "not slow"`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TARGET = 1.0
E2E = ("num-sites=3", "num-server-rounds=3", 'partitioner="iid"', f"target-epsilon={TARGET}")


def simulate(out: Path, name: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`fedllm simulate` in a subprocess (its own Ray), run folder ``out/name``; must succeed."""
    args = [arg for o in overrides for arg in ("-c", o)]
    proc = subprocess.run(
        [sys.executable, "-m", "fedllm.cli", "simulate", *args,
         "-c", f'out-dir="{out}"', "-c", f'run-name="{name}"'],
        cwd=ROOT, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("runs")
    proc = simulate(out, "e2e", *E2E)  # secure aggregation on: the default
    return out / "e2e", proc.stdout + proc.stderr


def test_run_folder_holds_metrics_model_plot_and_report(finished_run: tuple[Path, str]) -> None:
    run, stdout = finished_run
    assert {"metrics.json", "model.pt", "plot.png", "report.md"} <= {p.name for p in run.iterdir()}
    state = torch.load(run / "model.pt", weights_only=True)
    assert not any(k.startswith("_module.") for k in state)
    assert "epsilon (cumulative)" in stdout and "site-2" in stdout


def test_metrics_follow_the_schema_and_beat_chance(finished_run: tuple[Path, str]) -> None:
    metrics = json.loads((finished_run[0] / "metrics.json").read_text())
    assert metrics["config"]["num-sites"] == 3 and metrics["config"]["dp"] is True
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    for entry in metrics["rounds"]:
        assert {"accuracy", "loss", "auc", "epsilon"} <= set(entry)
        assert set(entry["epsilon"]) == {"site-0", "site-1", "site-2"}
    final = metrics["final"]
    assert final["delta"] == 1e-5
    assert final["epsilon"] == max(final["epsilon-per-site"].values())
    # Breast cancer's majority class is 62.7% of rows: a model that learned nothing gets that.
    assert final["accuracy"] > 0.7 and final["auc"] > 0.8


def test_metrics_and_report_say_where_each_training_value_came_from(
    finished_run: tuple[Path, str],
) -> None:
    run = finished_run[0]
    metrics = json.loads((run / "metrics.json").read_text())
    # The run set the rounds; breast cancer's own defaults gave the rest, at the server and
    # (the epsilon replay below) at every site.
    assert metrics["config"]["num-server-rounds"] == 3 and metrics["config"]["batch-size"] == 128
    sources = metrics["config-sources"]
    assert sources.pop("num-server-rounds") == "user"
    assert set(sources.values()) == {"task"}
    assert "- `batch-size` = `128` (task default)" in (run / "report.md").read_text()


def test_epsilon_is_cumulative_within_target_and_replayable(
    finished_run: tuple[Path, str],
) -> None:
    metrics = json.loads((finished_run[0] / "metrics.json").read_text())
    cfg = metrics["config"]
    for site in ("site-0", "site-1", "site-2"):
        reported = [r["epsilon"][site] for r in metrics["rounds"]]
        assert reported == sorted(reported) and reported[-1] <= TARGET
        assert reported[-1] >= 0.95 * TARGET  # the whole budget is used, not wasted
        info = metrics["rounds"][0]["sites"][site]
        # The schedule comes from the count the site released (noised, once): the release is
        # the first event of its history.
        schedule = DPSchedule.for_site(
            int(info["num-examples"]),
            cfg["batch-size"],
            cfg["local-epochs"],
            cfg["num-server-rounds"],
        )
        count = DPEvent(cfg["count-noise"], 1.0, 1)
        for r, value in enumerate(reported, start=1):
            replay = epsilon(
                [count] + [schedule.round_event(info["noise-multiplier"])] * r,
                cfg["target-delta"],
                cfg["accountant"],
            )
            assert value == pytest.approx(replay, rel=1e-6)


def test_federated_feature_scaling_runs_end_to_end(tmp_path: Path) -> None:
    simulate(tmp_path, "fed", "num-sites=3", "num-server-rounds=2", 'feature-scaling="federated"')
    metrics = json.loads((tmp_path / "fed" / "metrics.json").read_text())
    assert metrics["config"]["feature-scaling"] == "federated"
    assert metrics["final"]["accuracy"] > 0.8
    assert max(metrics["final"]["epsilon-per-site"].values()) <= 1.0
    assert "not covered by the epsilon" in (tmp_path / "fed" / "report.md").read_text()


def test_a_banks_csv_with_a_site_column_trains_one_site_per_value(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["region,income,segment,defaulted"]
    for i in range(600):
        income = rng.normal(50, 15)
        segment = ["retail", "sme", "corporate"][i % 3]
        risk = -0.08 * (income - 50) + (0.8 if segment == "sme" else 0.0)
        label = "yes" if risk + rng.normal(0, 0.5) > 0.3 else "no"
        rows.append(
            f"{['north', 'south', 'east'][i % 3 if i % 7 else 0]},{income:.1f},{segment},{label}"
        )
    data = tmp_path / "loans.csv"
    data.write_text("\n".join(rows) + "\n")
    simulate(
        tmp_path, "bank", 'task="csv"', f'data-path="{data}"', 'label-column="defaulted"',
        'partitioner="natural"', 'site-column="region"', "num-sites=3", "num-server-rounds=2",
        "target-epsilon=3.0",
    )  # fmt: skip
    final = json.loads((tmp_path / "bank" / "metrics.json").read_text())["final"]
    assert set(final["epsilon-per-site"]) == {"east", "north", "south"}
    assert max(final["epsilon-per-site"].values()) <= 3.0
    assert final["auc"] > 0.75


def test_dp_with_secure_aggregation_equals_dp_alone_on_the_same_noise(
    finished_run: tuple[Path, str], tmp_path: Path
) -> None:
    """DP + SecAgg+ against DP alone, both with reproducible-noise (research only: the same
    noise and batches in both runs), so the only difference left is SecAgg's quantization."""
    _, log = finished_run
    assert "secure aggregation on (SecAgg+)" in log
    assert "secagg: round 3, sum of 3 sites unmasked" in log
    assert "secagg: round 3, keys shared by 3 sites (ahead" in log  # two messages a round
    simulate(tmp_path, "secure", *E2E, "reproducible-noise=true")
    simulate(tmp_path, "plain", *E2E, "reproducible-noise=true", "secagg=false")
    secure = json.loads((tmp_path / "secure" / "metrics.json").read_text())
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert abs(secure["final"]["accuracy"] - plain["final"]["accuracy"]) <= 0.01
    assert secure["final"]["epsilon-per-site"] == pytest.approx(plain["final"]["epsilon-per-site"])
    a = torch.load(tmp_path / "secure" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)
    for key, value in a.items():  # 2**16..2**24 levels of +-8 (the ring): <= 2.4e-4 a round
        torch.testing.assert_close(value, b[key], rtol=0, atol=1e-3)
    for entry in secure["rounds"]:
        assert entry["rejected"] == {}
        assert all("secagg-clipped" in site for site in entry["sites"].values())
    report = (tmp_path / "secure" / "report.md").read_text()
    assert report.startswith("**NOT PRIVATE: reproducible-noise")


def test_two_runs_with_identical_config_train_different_dp_models(
    finished_run: tuple[Path, str], tmp_path: Path
) -> None:
    """The run config (its seed included) is public: the DP noise must not follow from it."""
    run, _ = finished_run
    simulate(tmp_path, "again", *E2E)
    a = torch.load(run / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "again" / "model.pt", weights_only=True)
    assert all((a[key] - b[key]).abs().max() > 1e-3 for key in a)
