"""Preparing an audit (before any training) and reading its result, without the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedllm.audit.canaries import PlantedCanaries
from fedllm.audit.run import AuditPlan, prepare_audit, report
from fedllm.cli import main
from fedllm.errors import ConfigError


def test_the_site_gets_only_the_included_canaries_and_the_masks_stay_with_the_auditor(
    tmp_path: Path,
) -> None:
    plan = AuditPlan(canaries=200, site_index=1)
    prepared = prepare_audit({"out-dir": str(tmp_path), "run-name": "a", "hidden-units": 16}, plan)
    assert prepared.cfg.audit_canaries == str((tmp_path / "a" / "site-canaries.json").resolve())
    assert prepared.run_dir == tmp_path / "a" / "run" and not prepared.run_dir.exists()
    planted = PlantedCanaries.load(prepared.cfg.audit_canaries)
    assert planted.site_index == 1
    assert planted.gradient is not None and planted.inputs is not None
    assert len(planted.gradient) == int(prepared.masks["gradient"].sum())
    assert len(planted.inputs) == int(prepared.masks["input"].sum())
    assert prepared.gradient is not None and len(prepared.gradient) == 200
    mask = prepared.masks["gradient"]
    np.testing.assert_array_equal(planted.gradient.offsets, prepared.gradient.offsets[mask])
    assert 60 < mask.sum() < 140  # each included with probability 1/2
    assert "mask" not in (tmp_path / "a" / "site-canaries.json").read_text()


@pytest.mark.parametrize(
    ("overrides", "plan", "message"),
    [
        ({"ledger-dir": "x"}, AuditPlan(), "fresh site ledgers"),
        ({"audit-canaries": "x.json"}, AuditPlan(), "set by `fedllm audit` itself"),
        ({}, AuditPlan(site_index=4), r"`--site` must be in 0..3, got 4"),
        ({}, AuditPlan(canaries=40), "exceeds the model's 31 trainable coordinates"),
    ],
)
def test_bad_audits_are_refused_before_any_training(
    tmp_path: Path, overrides: dict[str, object], plan: AuditPlan, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        prepare_audit({"out-dir": str(tmp_path), "run-name": "a", **overrides}, plan)


def test_bad_plans_name_the_option() -> None:
    with pytest.raises(ConfigError, match="`--attackers` must name some of"):
        AuditPlan(attackers=("oracle",))
    with pytest.raises(ConfigError, match="`--canaries` must be >= 2"):
        AuditPlan(canaries=1)


def test_the_command_refuses_an_unknown_attacker_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["audit", "--attackers", "oracle"]) == 2
    assert "`--attackers` must name some of black-box, coordinator, seed-knowing" in (
        capsys.readouterr().err
    )


def test_a_bound_above_the_reported_epsilon_is_a_violation_unless_the_noise_was_public(
    tmp_path: Path,
) -> None:
    """The tool fails loudly on an unsound run; reproducible noise is not private by design."""
    from fedllm.audit.guesses import STEINKE, Analysis, AuditOutcome, Guesses

    for reproducible in (False, True):
        name = f"r{reproducible}"
        prepared = prepare_audit(
            {"out-dir": str(tmp_path), "run-name": name, "reproducible-noise": reproducible},
            AuditPlan(canaries=20, attackers=("coordinator", "seed-knowing")),
        )
        prepared.run_dir.mkdir()
        metrics = {"config": {"dp": True}, "final": {"epsilon-per-site": {"site-0": 1.0}}}
        (prepared.run_dir / "metrics.json").write_text(json.dumps(metrics))
        high = Guesses(10, 20, 20, 2.0)
        analysis = Analysis(STEINKE, "(epsilon, delta)-DP", 0.05, high, (high,))
        outcomes = {
            a: AuditOutcome(20, 10, 0.95, 1e-5, (analysis,)) for a in prepared.plan.attackers
        }
        result = report(prepared, outcomes)
        expected = ["coordinator"] if reproducible else ["coordinator", "seed-knowing"]
        assert result["violations"] == expected
        assert result["reported-epsilon"] == 1.0


def test_the_report_carries_both_analyses_and_names_the_headline(tmp_path: Path) -> None:
    """Full-batch Gaussian releases: f-DP (mu-GDP) beside Steinke, the stronger as the headline,
    the schedule's own mu-GDP epsilon beside it; a subsampled release: the scaled-schedule
    family; no release (no DP): Steinke alone, and why."""
    from fedllm.audit.families import family_for
    from fedllm.audit.fdp import gdp_epsilon
    from fedllm.audit.guesses import audit
    from fedllm.cli.audit import summary
    from fedllm.privacy.events import DPEvent

    prepared = prepare_audit(
        {"out-dir": str(tmp_path), "run-name": "a", "hidden-units": 16},
        AuditPlan(canaries=200, attackers=("coordinator",)),
    )
    prepared.run_dir.mkdir()
    metrics = {"config": {"dp": True}, "final": {"epsilon-per-site": {"site-0": 8.0}}}
    (prepared.run_dir / "metrics.json").write_text(json.dumps(metrics))
    rng = np.random.default_rng(0)
    included = rng.random(200) < 0.5
    scores = rng.normal(1.7 * included, 1.0)
    full_batch = [DPEvent(2.5, 1.0, 10), DPEvent(5.0, 1.0, 1)]
    outcome = audit(scores, included, 1e-5, family=family_for(full_batch, 1e-5, "pld"))
    result = report(prepared, {"coordinator": outcome}, releases=full_batch)
    row = result["attackers"]["coordinator"]
    assert set(row["analyses"]) == {"steinke", "f-dp"}
    assert row["analysis"] == outcome.headline.name == result["strongest"]["analysis"]
    assert row["epsilon-lower-bound"] == max(
        a["epsilon-lower-bound"] for a in row["analyses"].values()
    )
    assert sum(a["level"] for a in row["analyses"].values()) == pytest.approx(0.05)
    assert result["f-dp"]["applies"] is True
    mu = (10 / 2.5**2 + 1 / 5.0**2) ** 0.5
    assert result["f-dp"]["schedule-gdp-epsilon"] == pytest.approx(gdp_epsilon(mu, 1e-5))
    assert result["f-dp"]["family"] == "mu-GDP"
    text = summary(result)
    assert f"{row['analysis']}*" in text and f"({row['analysis']} analysis)" in text
    assert "(f-dp against mu-GDP: " in text

    subsampled = [DPEvent(1.0, 0.1, 100)]
    result = report(prepared, {"coordinator": outcome}, releases=subsampled)
    assert result["f-dp"]["family"] == "scaled schedule"
    assert result["f-dp"]["schedule-mu"] is None

    alone = audit(scores, included, 1e-5)
    result = report(prepared, {"coordinator": alone}, releases=[])
    assert set(result["attackers"]["coordinator"]["analyses"]) == {"steinke"}
    assert result["f-dp"]["applies"] is False
    assert "f-dp not run" in summary(result)
