"""Canaries on the product's site path (``clients.train``, ``fedllm.training``) and the
seed-knowing attacker's replay of the DP noise, outside the simulation engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from clients.site import SiteGuard
from clients.train import SiteRuntime, privacy_request, train_round
from fedllm.audit.attacks import Observation, SiteRound, black_box_scores, regenerated_noise
from fedllm.audit.canaries import (
    GradientCanaries,
    InputCanaries,
    PlantedCanaries,
    canary_norm,
    planted_at,
)
from fedllm.config import RunConfig
from fedllm.errors import ConfigError, DataError
from fedllm.privacy import DPParams
from fedllm.privacy.randomness import public_training_seed
from fedllm.tasks import get_task, load_federation
from fedllm.training import LocalTraining, train_local
from fedllm.weights import to_arrays


def _context(run_config: dict[str, Any], index: int) -> Context:
    node: dict[str, bool | float | int | str] = {"partition-id": index, "num-partitions": 4}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=run_config)


def _canaries() -> GradientCanaries:
    names = ("net.0.weight", "net.0.weight", "net.2.weight")
    return GradientCanaries(names, np.array([3, 40, 5]), np.array([1.0, -1.0, 1.0]))


def test_planted_gradient_canaries_move_their_coordinates_by_lr_c_over_b(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    """One step (batch above the site's rows, sampling rate 1) of plain training: the update
    with the canaries planted differs from the one without by -lr s C / B at each canary's
    coordinate and nowhere else (C: 100 times the clip bound without DP, where nothing clips)."""
    canaries = _canaries()
    path = tmp_path / "canaries.json"
    PlantedCanaries(1, canaries, None).save(path)
    run_config = {
        **defaults,
        "dp": False,
        "secagg": False,
        "hidden-units": 16,
        "batch-size": 4096,
        "local-epochs": 1,
        "learning-rate": 2.0,
    }
    updates = []
    for key in ("", str(path)):
        context = _context({**run_config, "audit-canaries": key}, 1)
        site = SiteRuntime.from_context(context)
        guard = SiteGuard.simulated(tmp_path / f"site{bool(key)}", privacy_request(site.cfg))
        model = site.task.build_model(site.cfg, tuple(site.data.train.x.shape[1:]))
        result = train_round(site, guard, to_arrays(model), 1, "run", context.state)
        updates.append({k: v.numpy() for k, v in result.update.items()})
    cfg = RunConfig.from_flower(run_config)
    n = len(SiteRuntime.from_context(_context(run_config, 1)).data.train)
    expected = {k: np.zeros_like(v) for k, v in updates[0].items()}
    for name, offset, sign in zip(canaries.names, canaries.offsets, canaries.signs, strict=True):
        norm = canary_norm(cfg.max_grad_norm, cfg.dp)  # without DP: 100x the clip bound
        expected[name].reshape(-1)[offset] -= cfg.learning_rate * sign * norm / n
    for name in expected:
        np.testing.assert_allclose(updates[1][name] - updates[0][name], expected[name], atol=1e-6)


def test_only_the_audited_site_plants_and_a_deployed_site_refuses(tmp_path: Path) -> None:
    path = tmp_path / "canaries.json"
    PlantedCanaries(2, _canaries(), None).save(path)
    assert planted_at(str(path), 1, deployed=False) is None
    planted = planted_at(str(path), 2, deployed=False)
    assert planted is not None and planted.gradient is not None
    assert planted.gradient.offsets.tolist() == [3, 40, 5]
    with pytest.raises(DataError, match="deployed site"):
        planted_at(str(path), 0, deployed=True)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="is not a canary file"):
        planted_at(str(tmp_path / "bad.json"), 0, deployed=False)


def test_input_canaries_join_the_audited_sites_training_rows(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    inputs = InputCanaries.draw((30,), 2, 8, rng)
    path = tmp_path / "canaries.json"
    PlantedCanaries(0, None, inputs).save(path)
    plain = SiteRuntime.from_context(_context(defaults, 0))
    audited = SiteRuntime.from_context(_context({**defaults, "audit-canaries": str(path)}, 0))
    assert len(audited.data.train) == len(plain.data.train) + 8
    torch.testing.assert_close(audited.data.train.x[-8:], inputs.x)


def test_drawing_more_dirac_canaries_than_coordinates_is_refused(config: Any) -> None:
    cfg = config()
    model = get_task(cfg.task).build_model(cfg, (30,))  # logistic regression: 31 coordinates
    with pytest.raises(ConfigError, match="exceeds the model's 31 trainable coordinates"):
        GradientCanaries.draw(model, 32, np.random.default_rng(0))
    drawn = GradientCanaries.draw(model, 31, np.random.default_rng(0))
    assert len({(n, o) for n, o in zip(drawn.names, drawn.offsets, strict=True)}) == 31


def _one_step(
    cfg: RunConfig, sigma: float, noise_seed: int | None
) -> tuple[torch.nn.Module, dict[str, np.ndarray], int]:
    task = get_task(cfg.task)
    data = load_federation(cfg).sites[1].train
    model = task.build_model(cfg, tuple(data.x.shape[1:]))
    before = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
    settings = LocalTraining(1, 4096, cfg.learning_rate, seed=5, noise_seed=noise_seed)
    train_local(task, model, data, settings, DPParams(sigma, cfg.max_grad_norm))
    after = {k: v.numpy() for k, v in model.state_dict().items()}
    return model, {k: after[k] - before[k] for k in after}, len(data)


def test_the_seed_knowing_attacker_replays_reproducible_noise_exactly(config: Any) -> None:
    """One DP-SGD step (rate 1) with noise drawn from the public seed: the update minus the
    same step without noise is exactly the noise the attacker regenerates."""
    cfg = config(hidden_units=8, learning_rate=2.0)
    seed = public_training_seed(cfg.seed, 3, 1)
    model, noisy, n = _one_step(cfg, 2.0, seed)
    _, clean, _ = _one_step(cfg, 0.0, seed)
    obs = Observation(cfg, get_task(cfg.task), model, {}, {}, (SiteRound(1, 3, n, 2.0, 1.0, 1),))
    replayed = regenerated_noise(obs)
    for name in noisy:
        np.testing.assert_allclose(noisy[name] - clean[name], replayed[name], atol=1e-5)
    # With secret noise (fresh OS entropy) the replay is unrelated to the noise drawn.
    _, secret, _ = _one_step(cfg, 2.0, None)
    name = "net.0.weight"
    drawn = (secret[name] - clean[name]).ravel()
    assert abs(np.corrcoef(drawn, replayed[name].ravel())[0, 1]) < 0.3


def test_black_box_scores_rank_fitted_canaries_first(config: Any) -> None:
    cfg = config(hidden_units=32)
    task = get_task(cfg.task)
    canaries = InputCanaries.draw((30,), 2, 40, np.random.default_rng(1))
    fitted = canaries.subset(np.arange(40) < 20)
    model = task.build_model(cfg, (30,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        task.loss(model(fitted.x), fitted.y).backward()
        optimizer.step()
    scores = black_box_scores(task, model, canaries)
    assert scores[:20].mean() > scores[20:].mean()


def test_the_server_keeps_each_sites_plain_updates_only_in_an_audit_without_secagg(
    config: Any, tmp_path: Path
) -> None:
    from flwr.app import Array, ArrayRecord

    from fedllm.audit.observed import ObservedUpdates, load_observed

    assert ObservedUpdates.for_run(config(secagg=False), tmp_path) is None  # not an audit
    assert ObservedUpdates.for_run(config(audit_canaries="c.json"), tmp_path) is None  # SecAgg
    observed = ObservedUpdates.for_run(config(audit_canaries="c.json", secagg=False), tmp_path)
    assert observed is not None

    def arrays(value: float) -> ArrayRecord:
        return ArrayRecord({"w": Array(np.full((2, 3), value, dtype=np.float32))})

    observed.add("site-0", arrays(1.5), arrays(1.0))
    observed.add("site-0", arrays(0.0), arrays(1.0))
    observed.add("site-1", arrays(3.0), arrays(1.0))
    kept = load_observed(tmp_path, "site-0")
    assert kept is not None
    np.testing.assert_allclose(kept["w"], np.full((2, 3), -0.5))
    assert load_observed(tmp_path, "site-7") is None


def test_the_coordinator_scores_the_sites_own_updates_when_it_has_them(config: Any) -> None:
    """Secure aggregation off: the site's own summed update; on: the aggregate (final minus
    initial global model)."""
    from fedllm.audit.attacks import coordinator_scores

    cfg = config()
    canaries = GradientCanaries(("w", "w"), np.array([0, 2]), np.array([1.0, -1.0]))
    initial = {"w": np.zeros(3)}
    final = {"w": np.array([-1.0, 0.0, 1.0])}  # the aggregate moved both canaries' way
    own = {"w": np.array([-3.0, 0.0, -3.0])}
    task = get_task(cfg.task)
    model = task.build_model(cfg, (30,))
    aggregate = Observation(cfg, task, model, initial, final, ())
    assert coordinator_scores(aggregate, canaries).tolist() == [1.0, 1.0]
    site = Observation(cfg, task, model, initial, final, (), 0, own)
    assert coordinator_scores(site, canaries).tolist() == [3.0, -3.0]
