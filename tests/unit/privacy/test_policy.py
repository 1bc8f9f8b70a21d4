"""The site's policy: a run may ask for stricter privacy, never weaker."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm.errors import PolicyError
from fedllm.privacy import PrivacyRequest, SitePolicy

POLICY = SitePolicy(
    max_epsilon=2.0, delta=1e-5, min_noise_multiplier=0.5, max_clip_norm=1.0, accountants=("prv",)
)
STRICT = PrivacyRequest(
    True, target_epsilon=1.0, target_delta=1e-6, max_grad_norm=0.5, accountant="prv"
)


def test_a_stricter_request_is_accepted() -> None:
    POLICY.check(STRICT)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_epsilon": 3.0}, "target-epsilon 3.0 is above the site's max-epsilon 2.0"),
        ({"target_delta": 1e-4}, "target-delta 0.0001 is above the site's delta 1e-05"),
        ({"max_grad_norm": 2.0}, "max-grad-norm 2.0 is above the site's max-clip-norm 1.0"),
        ({"accountant": "rdp"}, "accountant 'rdp' is not one the site accepts"),
        ({"dp": False}, "without DP; the site policy forbids it"),
    ],
)
def test_a_weaker_request_is_refused_with_the_reason(
    change: dict[str, object], message: str
) -> None:
    request = PrivacyRequest(**{**STRICT.__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match=message):
        POLICY.check(request)


def test_too_little_noise_is_refused() -> None:
    with pytest.raises(PolicyError, match="noise multiplier 0.4000, below .* 0.5"):
        POLICY.check_noise(0.4)


def test_the_file_round_trips_and_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    POLICY.write(path)
    assert SitePolicy.load(path) == POLICY
    with pytest.raises(PolicyError, match="already exists"):
        SitePolicy(max_epsilon=100.0, delta=0.1).write(path)
    assert SitePolicy.load(path) == POLICY


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max-epsilon = 1.0\n", "`delta` is required"),
        ("max-epsilon = -1\ndelta = 1e-5\n", "`max-epsilon` must be > 0, got -1"),
        ("max-epsilon = 1\ndelta = 1e-5\nmax-epsilonn = 2\n", "unknown key.* max-epsilonn"),
        ('max-epsilon = 1\ndelta = 1e-5\naccountants = "prv"\n', "`accountants` must be a list"),
        ('max-epsilon = 1\ndelta = 1e-5\naccountants = ["gdp"]\n', "non-empty list of prv, rdp"),
        ("max-epsilon = [1\n", "not valid TOML"),
    ],
)
def test_a_bad_policy_file_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message):
        SitePolicy.load(path)


def test_the_simulated_policy_is_exactly_the_request() -> None:
    policy = SitePolicy.from_request(STRICT)
    policy.check(STRICT)
    assert policy.max_epsilon == 1.0 and policy.accountants == ("prv",)


def test_reproducible_noise_needs_the_policy_to_allow_it(tmp_path: Path) -> None:
    request = PrivacyRequest(True, 1.0, 1e-5, 1.0, "prv", reproducible_noise=True)
    with pytest.raises(PolicyError, match="reproducible-noise"):
        SitePolicy(max_epsilon=1.0, delta=1e-5).check(request)
    allowing = SitePolicy(max_epsilon=1.0, delta=1e-5, allow_reproducible_noise=True)
    allowing.check(request)
    allowing.write(tmp_path / "policy.toml")
    assert SitePolicy.load(tmp_path / "policy.toml") == allowing


def test_the_new_limits_default_to_releasing_nothing_outside_epsilon(tmp_path: Path) -> None:
    """An older policy file (without the keys) and a new site's: no feature statistics, no
    evaluations under DP, client-level noise split among at most 10 sites."""
    path = tmp_path / "policy.toml"
    path.write_text("max-epsilon = 1.0\ndelta = 1e-5\n")
    policy = SitePolicy.load(path)
    assert not policy.allow_feature_statistics
    assert policy.max_evaluations == 0 and policy.max_federation_size == 10
    with pytest.raises(PolicyError, match="allow-feature-statistics"):
        policy.check_feature_statistics()
    with pytest.raises(PolicyError, match="allows 0 per run"):
        policy.check_evaluation(0)
    with pytest.raises(PolicyError, match=r"says 11 sites .* at most 10"):
        policy.check_federation(11)
    policy.check_federation(10)


def test_the_release_limits_round_trip_and_bound_the_run(tmp_path: Path) -> None:
    policy = SitePolicy(
        max_epsilon=2.0,
        delta=1e-5,
        allow_feature_statistics=True,
        max_evaluations=3,
        max_federation_size=4,
    )
    policy.write(tmp_path / "policy.toml")
    assert SitePolicy.load(tmp_path / "policy.toml") == policy
    policy.check_feature_statistics()
    policy.check_evaluation(2)
    with pytest.raises(PolicyError, match="allows 3 per run .* this run had 3"):
        policy.check_evaluation(3)
    request = PrivacyRequest(True, 1.0, 1e-5, 1.0, "prv", evaluations=4)
    with pytest.raises(PolicyError, match="plans 4 evaluation.* max-evaluations 3"):
        policy.check(request)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max-evaluations = -1\n", "`max-evaluations` must be >= 0"),
        ("max-evaluations = 1.5\n", "`max-evaluations` must be a whole number"),
        ("max-federation-size = 0\n", "`max-federation-size` must be >= 1"),
        ('allow-feature-statistics = "yes"\n', "`allow-feature-statistics` must be true or false"),
    ],
)
def test_bad_release_limits_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("max-epsilon = 1.0\ndelta = 1e-5\n" + text)
    with pytest.raises(PolicyError, match=message):
        SitePolicy.load(path)


def test_the_simulated_policy_mirrors_the_runs_releases() -> None:
    request = PrivacyRequest(
        True, 1.0, 1e-5, 1.0, "prv", evaluations=2, feature_statistics=True, federation_size=6
    )
    policy = SitePolicy.from_request(request)
    policy.check(request)
    assert policy.allow_feature_statistics and policy.max_evaluations == 2
    assert policy.max_federation_size == 6
    assert not SitePolicy.from_request(STRICT).allow_feature_statistics
