"""The accountant registry and its compositions: each accountant's figure equals an independent
evaluation of the whole history (Opacus's own accountants for `prv` and `rdp`, dp-accounting's
PLDAccountant for `pld`), whether composed at once or one event at a time."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

from fedllm.config import RunConfig
from fedllm.errors import ConfigError, PolicyError, PrivacyError
from fedllm.privacy import ACCOUNTANTS, DPEvent, DPSchedule, SitePolicy, get_accountant, merge
from fedllm.privacy.accountants import Figure
from fedllm.privacy.accountants import pld as pld_module
from fedllm.privacy.accountants.prv import MAX_PRV_SIZE, prv_epsilon, prv_size
from tests.histories import histories, many_runs, reference
from tests.unit.privacy.test_client_dp import exact_epsilon

DELTA = 1e-5


def test_every_name_resolves_and_an_unknown_one_lists_the_known_ones() -> None:
    assert set(ACCOUNTANTS) == {"prv", "rdp", "pld"}
    for name in ACCOUNTANTS:
        assert get_accountant(name).name == name
    with pytest.raises(PrivacyError, match=r"must be one of prv, rdp, pld, got 'moments'"):
        get_accountant("moments")


def test_the_run_config_and_site_policies_check_names_against_the_registry(
    defaults: dict[str, object],
) -> None:
    assert RunConfig.from_flower({**defaults, "accountant": "pld"}).accountant == "pld"
    with pytest.raises(ConfigError, match="`accountant` must be one of prv, rdp, pld"):
        RunConfig.from_flower({**defaults, "accountant": "moments"})
    assert SitePolicy(max_epsilon=1.0, delta=1e-5).accountants == ("prv", "rdp", "pld")
    with pytest.raises(PolicyError, match="non-empty list of prv, rdp, pld"):
        SitePolicy(max_epsilon=1.0, delta=1e-5, accountants=("moments",))


@pytest.mark.parametrize("accountant", list(ACCOUNTANTS))
def test_a_step_without_noise_makes_the_history_not_private_for_good(accountant: str) -> None:
    spent = get_accountant(accountant).start(DELTA).then(DPEvent(1.0, 0.1, 10))
    assert math.isfinite(spent.epsilon())
    spent = spent.then(DPEvent(0.0, 0.1, 5)).then(DPEvent(1.0, 0.1, 10))
    assert spent.epsilon() == math.inf and spent.bound() == math.inf
    assert get_accountant(accountant).start(DELTA).then(DPEvent(1.0, 0.1, 0)).epsilon() == 0.0


@pytest.mark.parametrize("accountant", list(ACCOUNTANTS))
def test_bad_events_and_deltas_are_refused(accountant: str) -> None:
    with pytest.raises(PrivacyError, match="noise multiplier must be >= 0"):
        get_accountant(accountant).start(DELTA).then(DPEvent(-1.0, 0.1, 1))
    with pytest.raises(PrivacyError, match=r"sample rate must be in \(0, 1\]"):
        get_accountant(accountant).start(DELTA).then(DPEvent(1.0, 1.5, 1))
    with pytest.raises(PrivacyError, match=r"`delta` must be in \(0, 1\), got 0"):
        get_accountant(accountant).start(0)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(
    "events",
    [
        [DPEvent(1.1, 0.05, 40)] * 3,
        [DPEvent(0.9, 0.2, 7), DPEvent(2.5, 0.01, 300), DPEvent(0.9, 0.2, 7)],
        [DPEvent(12.1, 0.5, 2)] * 20,  # a heart-disease site's 20 rounds
    ],
)
def test_prv_and_rdp_are_opacus_s_figures_bit_for_bit(
    events: list[DPEvent], accountant: str
) -> None:
    assert get_accountant(accountant).epsilon(events, DELTA) == reference(events, DELTA, accountant)


@settings(max_examples=10, deadline=None)
@given(events=histories, accountant=st.sampled_from(["prv", "rdp", "pld"]))
def test_composing_one_event_at_a_time_equals_a_fresh_evaluation_of_the_whole_history(
    events: list[DPEvent], accountant: str
) -> None:
    spent = get_accountant(accountant).start(DELTA)
    for event in events:  # a round at a time, each round's figure asked for as a site does
        spent = spent.then(event)
        spent.bound() if accountant == "prv" else spent.epsilon()  # PRV: exact on demand only
    figure = spent.figure()  # by pld where prv's exact figure is out of reach
    assert figure.epsilon == pytest.approx(reference(events, DELTA, figure.accountant), rel=1e-3)


@settings(max_examples=12, deadline=None)
@given(events=histories, delta=st.sampled_from([1e-5, 1e-6, 1e-3]))
def test_the_prv_bound_is_above_the_exact_prv_figure(events: list[DPEvent], delta: float) -> None:
    spent = get_accountant("prv").compose(events, delta)
    assume(spent.counted() is spent)  # in reach (out of reach, PLD counts: no bound is used)
    assert spent.bound() >= spent.epsilon()
    assert spent.within(spent.bound()) and not spent.within(spent.epsilon() - 1e-9)


@settings(max_examples=12, deadline=None)
@given(events=histories, delta=st.sampled_from([1e-5, 1e-6, 1e-3]))
def test_the_prv_bound_is_above_the_pld_figure(events: list[DPEvent], delta: float) -> None:
    """What lets the bound decide a check on a history that counts by PLD."""
    spent = get_accountant("prv").compose(events, delta)
    pld_figure = get_accountant("pld").compose(events, delta).epsilon()
    assert spent.bound() >= pld_figure


def test_a_check_within_the_bound_of_a_history_past_prvs_reach_computes_no_figure() -> None:
    events = many_runs(50)  # round_overhead's ledger
    spent = get_accountant("prv").compose(events, DELTA)
    assert spent.counted() is not spent  # past PRV's reach: counts by PLD
    pld_module._FIGURES.clear()
    assert spent.within(spent.bound() + 0.5)
    assert pld_module._FIGURES.get((spent.history, DELTA)) is None  # decided by the bound
    assert not spent.within(spent.figure().epsilon * 0.99)  # near it: PLD's figure decides


def test_a_check_within_the_prv_bound_does_not_evaluate_prv() -> None:
    spent = get_accountant("prv").compose([DPEvent(3.0, 0.01, 500)], DELTA)
    before = prv_epsilon.cache_info()
    assert spent.within(spent.bound() + 1.0)
    assert prv_epsilon.cache_info() == before  # decided by the bound alone
    assert not spent.within(spent.epsilon() * 0.99)  # near the limit: the exact figure decides
    assert prv_epsilon.cache_info().misses == before.misses + 1


@pytest.mark.parametrize("accountant", list(ACCOUNTANTS))
def test_calibration_spends_the_target_over_the_rounds_as_composed(accountant: str) -> None:
    schedule = DPSchedule(sample_rate=0.5, steps_per_round=2, rounds=20)
    sigma = get_accountant(accountant).calibrate(1.0, DELTA, schedule)
    spent = get_accountant(accountant).start(DELTA)
    for _ in range(schedule.rounds):
        spent = spent.then(schedule.round_event(sigma))
    assert 0.99 <= spent.epsilon() <= 1.0


def test_pld_is_below_prv_by_about_prv_s_margin_and_above_the_exact_gaussian_curve() -> None:
    for events in ([DPEvent(1.1, 0.05, 400)], [DPEvent(12.1, 0.5, 40)], [DPEvent(2.0, 1.0, 10)]):
        pld = get_accountant("pld").epsilon(events, DELTA)
        prv = get_accountant("prv").epsilon(events, DELTA)
        assert prv - 0.012 <= pld <= prv
    gaussian = [DPEvent(3.0, 1.0, 1)] * 5  # no subsampling: an exact closed form exists
    pld = get_accountant("pld").epsilon(gaussian, 1e-3)
    exact = exact_epsilon([3.0] * 5, 1e-3)
    assert exact <= pld <= exact * 1.002


@pytest.mark.parametrize("events", [[DPEvent(1.1, 0.05, 400)], many_runs(7)])  # 2 recurring
def test_the_prv_size_is_opacus_s_grid_times_the_events(events: list[DPEvent]) -> None:
    history = tuple(merge(events))
    prvs = [PoissonSubsampledGaussianPRV(e.sample_rate, e.noise_multiplier) for e in history]
    steps = [e.steps for e in history]
    grid = PRVAccountant()._get_domain(prvs, steps, eps_error=0.01, delta_error=DELTA / 1000)
    assert prv_size(history, DELTA) == grid.size * len(history)


def _fresh_pld(events: list[DPEvent]) -> float:
    """The `pld` accountant's figure, computed anew (not read from the figures' memo)."""
    pld_module._FIGURES.clear()
    return get_accountant("pld").epsilon(events, DELTA)


def test_past_the_size_limit_prv_is_never_attempted_and_the_history_counts_by_pld() -> None:
    events = many_runs(50)  # round_overhead's ledger: 1.5 million grid points x 50 events
    spent = get_accountant("prv").compose(events, DELTA)
    assert prv_size(spent.history, DELTA) > MAX_PRV_SIZE
    before = prv_epsilon.cache_info()
    figure = spent.figure()
    assert figure == Figure("pld", _fresh_pld(events))
    assert figure.epsilon == pytest.approx(reference(events, DELTA, "pld"), rel=1e-3)
    assert spent.within(figure.epsilon) and not spent.within(figure.epsilon - 1e-9)
    with pytest.raises(PrivacyError, match="exact PRV figure of this history is out of reach"):
        spent.epsilon()
    assert prv_epsilon.cache_info() == before  # not attempted, not even by the checks


def test_within_the_size_limit_prv_counts_as_before() -> None:
    events = many_runs(5)  # five runs: about 1 million grid points x events
    spent = get_accountant("prv").compose(events, DELTA)
    assert prv_size(spent.history, DELTA) <= MAX_PRV_SIZE
    assert spent.figure() == Figure("prv", reference(events, DELTA, "prv"))


def test_past_the_size_limit_the_figure_equals_a_fresh_pld_round_by_round() -> None:
    history = many_runs(8)  # already out of reach
    spent = get_accountant("prv").compose(history, DELTA)
    spent.figure()
    for run in many_runs(11)[8:]:  # three more runs, of four rounds each
        for _ in range(4):
            spent = spent.then(DPEvent(run.noise_multiplier, run.sample_rate, run.steps // 4))
            history.append(DPEvent(run.noise_multiplier, run.sample_rate, run.steps // 4))
            assert spent.figure() == Figure("pld", _fresh_pld(history))
