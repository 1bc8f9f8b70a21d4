"""Two federated rounds of DP-LoRA in-process, through the real site round (policy, ledger,
calibrated noise, fedllm's DP-SGD) and example-weighted FedAvg of the adapters: held-out loss
falls, each site's epsilon is cumulative and within its target, only adapters travel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, RecordDict

from clients.site import SiteGuard
from clients.train import SiteRuntime, privacy_request, train_round
from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.lm import Pretraining, pretrain
from fedllm.models import adapter_parameters
from fedllm.tasks.text import TextLM
from fedllm.training import evaluate
from fedllm.weights import load_arrays, to_arrays
from tests.text_data import play, write_play

TARGET = 8.0


@pytest.mark.slow  # pretrains a base and trains two DP-LoRA rounds: ~15-25 s
def test_two_dp_lora_rounds_reduce_held_out_loss(
    config: Callable[..., RunConfig], tmp_path: Path
) -> None:
    arch = {"context_length": 32, "lm_layers": 1, "lm_heads": 2, "lm_width": 32, "lora_rank": 4}
    base = tmp_path / "base.pt"
    pretrain(
        config(task="text", **arch), play(200, seed=1).encode(), Pretraining(60, 32, 3e-3), base
    )
    cfg = config(
        task="text", data_path=str(write_play(tmp_path / "private.txt", 900, seed=2)),
        base_model=str(base), partitioner="natural", num_sites=2, num_server_rounds=2,
        batch_size=64, learning_rate=0.5, max_grad_norm=1.0, target_epsilon=TARGET, **arch,
    )  # fmt: skip
    task = TextLM()
    fed = task.federation(cfg)
    server = task.build_model(cfg, fed.input_shape)
    arrays = to_arrays(server)
    assert set(arrays) == set(adapter_parameters(server))
    losses = [evaluate(task, server, fed.central_test)["loss"]]
    states = [RecordDict() for _ in fed.sites]
    spent: dict[str, list[float]] = {s.name: [] for s in fed.sites}
    for server_round in (1, 2):
        updates, weights = [], []
        for i, site in enumerate(fed.sites):
            guard = SiteGuard.simulated(tmp_path / "sites" / site.name, privacy_request(cfg))
            runtime = SiteRuntime(cfg, task, site, i)
            result = train_round(runtime, guard, arrays, server_round, "run", states[i])
            update, metrics = result.update, result.metrics
            assert set(update) == set(arrays)  # adapters only
            updates.append(update.to_torch_state_dict())
            weights.append(float(metrics[proto.NUM_EXAMPLES]))  # type: ignore[arg-type]
            spent[site.name].append(float(metrics[proto.EPSILON]))  # type: ignore[arg-type]
        share = np.array(weights) / sum(weights)
        arrays = ArrayRecord(
            {
                k: sum(float(w) * u[k] for w, u in zip(share, updates, strict=True))
                for k in updates[0]
            }
        )  # type: ignore[misc]
        load_arrays(server, arrays)
        losses.append(evaluate(task, server, fed.central_test)["loss"])
    assert losses[2] < losses[1] < losses[0]
    for eps in spent.values():
        assert 0 < eps[0] < eps[1] <= TARGET
