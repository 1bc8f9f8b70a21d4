"""The utility benchmark's tuning protocol: validation rows never include a row any reported
run holds out, and the choice of a setting is the best mean validation score."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from tuning import Setting, choose, validation_federation, validation_rows

from fedllm.config import RunConfig
from fedllm.tasks import Source, get_task
from fedllm.tasks.base import build_federation

REPORTED = (0, 1, 2, 3, 4)


def _cfg(defaults: dict[str, Any], **overrides: Any) -> RunConfig:
    return RunConfig.from_flower({**defaults, "task": "breast-cancer", **overrides})


def _held_out_by_product(cfg: RunConfig, source: Source) -> set[int]:
    """Rows the product holds out under each reported seed, found by content: with federated
    scaling the product leaves the rows unscaled, so each held-out row is a source row."""
    index = {row.tobytes(): i for i, row in enumerate(source.x)}
    assert len(index) == len(source.x)  # breast cancer's rows are distinct
    held = set()
    task = get_task(cfg.task)
    for seed in REPORTED:
        run = replace(cfg, seed=seed, feature_scaling="federated")
        fed = build_federation(task, run, source, run.num_sites, run.partitioner)
        for site in fed.sites:
            held.update(index[row.tobytes()] for row in site.test.x.numpy().astype(source.x.dtype))
    return held


@pytest.mark.parametrize("tuning_seed", [100, 101])
def test_validation_rows_are_never_rows_a_reported_run_holds_out(
    defaults: dict[str, Any], tuning_seed: int
) -> None:
    cfg = _cfg(defaults, seed=tuning_seed)
    source = get_task(cfg.task).load_source(cfg, "")
    held = _held_out_by_product(cfg, source)
    chosen = validation_rows(cfg, source, REPORTED, 0.2)
    val = np.concatenate([rows for _, rows in chosen])
    assert len(val) > 0.1 * len(source.y)  # enough rows to score on
    assert not set(val.tolist()) & held
    for site, rows in chosen:  # drawn from the site's own training rows under the tuning seed
        assert set(rows.tolist()) <= set(site.train.tolist())


def test_validation_federation_trains_without_its_validation_rows(
    defaults: dict[str, Any],
) -> None:
    fed = validation_federation(_cfg(defaults, seed=100), REPORTED, 0.2)
    assert len(fed.central_test) == sum(len(s.test) for s in fed.sites)
    for site in fed.sites:
        train = {row.tobytes() for row in site.train.x.numpy()}
        assert not any(row.tobytes() in train for row in site.test.x.numpy())


def test_a_source_with_its_own_test_set_keeps_every_training_row_available(
    defaults: dict[str, Any],
) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    source = Source(rng.normal(size=(200, 3)), y, test=(rng.normal(size=(50, 3)), y[:50]))
    cfg = _cfg(defaults, seed=100, partitioner="iid")
    chosen = validation_rows(cfg, source, REPORTED, 0.25)
    for site, rows in chosen:
        assert len(rows) == round(0.25 * len(site.train))
        assert set(rows.tolist()) <= set(site.train.tolist())


def test_a_tuning_seed_that_is_also_reported_is_refused(defaults: dict[str, Any]) -> None:
    cfg = _cfg(defaults, seed=3)
    with pytest.raises(ValueError, match="tuning seed 3 is also a reported seed"):
        validation_rows(cfg, get_task(cfg.task).load_source(cfg, ""), REPORTED, 0.2)


def test_choose_takes_the_best_mean_and_the_earlier_of_a_tie() -> None:
    a, b, c = Setting(1.0, 64, 0.5), Setting(4.0, 64, 0.5), Setting(4.0, 128, 0.5)
    assert choose((a, b, c), {a: [0.8, 0.9], b: [0.9, 0.92], c: [0.95, 0.8]}) == b
    assert choose((a, b, c), {a: [0.9], b: [0.9], c: [0.1]}) == a
    with pytest.raises(ValueError, match="no validation score"):
        choose((a, b), {a: [0.9]})


def test_carve_scores_on_training_rows_and_leaves_the_held_out_rows(
    defaults: dict[str, Any],
) -> None:
    from tuning import carve

    from fedllm.tasks import load_federation

    fed = load_federation(_cfg(defaults))
    tuned = carve(fed, 0.1, 100)
    for site, before in zip(tuned.sites, fed.sites, strict=True):
        rows = {r.tobytes() for r in before.train.x.numpy()}
        assert len(site.train) + len(site.test) == len(before.train)
        assert all(r.tobytes() in rows for r in site.test.x.numpy())  # from training rows
        assert not {r.tobytes() for r in site.train.x.numpy()} & {
            r.tobytes() for r in site.test.x.numpy()
        }
    assert len(tuned.central_test) == sum(len(s.test) for s in tuned.sites)


def test_fedllm_tuning_rounds_calibrate_as_its_sites_do(
    defaults: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fedllm's side of tuning trains as clients/train.py does under DP: the noise calibrated for
    the run's whole release plan at the site's noised count (the count release included), and
    the schedule normalized by that count, not by the exact one."""
    import tuning

    import fedllm.training
    from clients.train import release_plan
    from fedllm.privacy import calibrate_noise, calibrate_plan

    seen: list[tuple[float, int | None]] = []
    real = fedllm.training.train_local

    def spy(task: Any, model: Any, data: Any, settings: Any, dp: Any) -> Any:
        seen.append((dp.noise_multiplier, settings.schedule_examples))
        return real(task, model, data, settings, dp)

    monkeypatch.setattr(fedllm.training, "train_local", spy)
    cfg = _cfg(defaults, dp=True, **{"target-epsilon": 1.0, "num-server-rounds": 3})
    task = get_task(cfg.task)
    fed = build_federation(task, cfg, task.load_source(cfg, ""), cfg.num_sites, cfg.partitioner)
    site = fed.sites[0].train
    count = len(site) + 7  # a released count differs from the exact one
    model = task.build_model(cfg, fed.input_shape)
    tuning._fedllm_site(task, cfg, model, site, 0, count)
    plan = release_plan(cfg, count)
    ((sigma, normalizer),) = seen
    assert normalizer == count
    assert sigma == pytest.approx(
        calibrate_plan(cfg.target_epsilon, cfg.target_delta, plan, cfg.accountant)
    )
    # the count release costs epsilon: more DP-SGD noise than the schedule alone would need
    assert sigma > calibrate_noise(
        cfg.target_epsilon, cfg.target_delta, plan.schedule, cfg.accountant
    )
