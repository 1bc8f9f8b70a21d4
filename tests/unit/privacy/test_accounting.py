from __future__ import annotations

import pytest

from fedllm.errors import PrivacyError
from fedllm.privacy import DPEvent, DPSchedule, calibrate_noise, epsilon, get_accountant

SCHEDULES = [
    # (examples, batch, local epochs, rounds, target epsilon, accountant)
    (120, 64, 1, 10, 1.0, "prv"),
    (303, 32, 2, 20, 1.0, "rdp"),
    (46, 64, 1, 20, 3.0, "prv"),
    (15000, 256, 1, 5, 2.0, "rdp"),
    (2000, 50, 3, 4, 8.0, "prv"),
]


@pytest.mark.parametrize(("n", "batch", "epochs", "rounds", "target", "accountant"), SCHEDULES)
def test_calibrated_noise_spends_at_most_the_target_and_close_to_it(
    n: int, batch: int, epochs: int, rounds: int, target: float, accountant: str
) -> None:
    schedule = DPSchedule.for_site(n, batch, epochs, rounds)
    sigma = calibrate_noise(target, 1e-5, schedule, accountant)
    spent = epsilon([schedule.round_event(sigma)] * rounds, 1e-5, accountant)
    assert spent <= target
    assert spent >= 0.95 * target


def test_schedule_matches_opacus_poisson_loader() -> None:
    schedule = DPSchedule.for_site(num_examples=130, batch_size=64, local_epochs=2, rounds=20)
    assert schedule.sample_rate == pytest.approx(1 / 3)
    assert schedule.steps_per_round == 6 and schedule.total_steps == 120


def test_epsilon_is_cumulative_non_decreasing_and_replayable() -> None:
    from opacus.accountants import PRVAccountant

    schedule = DPSchedule.for_site(200, 50, 1, 6)
    sigma = calibrate_noise(2.0, 1e-5, schedule, "prv")
    spent = get_accountant("prv").start(1e-5)
    reported = []
    for _ in range(schedule.rounds):
        spent = spent.then(schedule.round_event(sigma))
        reported.append(spent.epsilon())
        fresh = PRVAccountant()  # a fresh accountant stepping through every step so far
        for _ in range(len(reported) * schedule.steps_per_round):
            fresh.step(noise_multiplier=sigma, sample_rate=schedule.sample_rate)
        assert reported[-1] == pytest.approx(fresh.get_epsilon(delta=1e-5), rel=1e-9)
    assert reported == sorted(reported) and reported[0] > 0
    assert reported[-1] <= 2.0


def test_unreachable_or_invalid_targets_are_refused() -> None:
    schedule = DPSchedule.for_site(100, 10, 1, 1)
    with pytest.raises(PrivacyError, match="`target-epsilon` must be > 0, got 0"):
        calibrate_noise(0, 1e-5, schedule, "rdp")
    with pytest.raises(PrivacyError, match="`accountant` must be one of"):
        epsilon([DPEvent(1.0, 0.1, 1)], 1e-5, "moments")
