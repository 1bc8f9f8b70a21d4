"""Strategies behind one seam: the registry, FedAdam's step on the (plain or secure) mean
against Adam written out by hand, and FedProx's server side."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import secagg
from fedllm import config as fedllm_config
from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.errors import ConfigError
from fedllm.secagg.vector import QUANTIZATION_BITS
from fedllm.tasks.tabular import TabularModel
from fedllm.weights import to_arrays
from server.site_records import SiteRecords
from server.strategies import STRATEGIES, FedAdam, FedAvg, FedProx, build_strategy
from tests.loopback_grid import Handler, LoopbackGrid
from tests.messages import instruction
from tests.secagg_run import memory_identity

NODES = [21, 22, 23, 24]
IDENTITY = memory_identity(NODES)
CLIP = 8.0
ETA, BETA1, BETA2, TAU = 0.05, 0.9, 0.99, 1e-3  # Flower's FedAdam defaults but eta


def _local(global_arrays: ArrayRecord, node: int, server_round: int) -> dict[str, np.ndarray]:
    """Site ``node``'s model after round ``server_round``: a known step from the global one
    (a different direction each round, so Adam's moments matter)."""
    sign = 1.0 if server_round % 2 else -0.5
    out = {}
    for key, array in global_arrays.items():
        values = array.numpy()
        step = sign * 0.01 * node * np.arange(values.size).reshape(values.shape)
        out[key] = (values + step).astype(values.dtype)
    return out


def _examples(node: int) -> int:
    return 10 * node


def _reply(msg: Message, context: Context, records: dict[str, Any]) -> Message:
    content = RecordDict(
        {
            proto.METRICS: MetricRecord(
                {proto.NUM_EXAMPLES: _examples(context.node_id), proto.TRAIN_LOSS: 0.1}
            ),
            proto.SITE: ConfigRecord({proto.SITE_NAME: f"site-{context.node_id}"}),
            **records,
        }
    )
    return Message(content=content, reply_to=msg)


def _plain_train(msg: Message, context: Context) -> Message:
    arrays = msg.content.array_records[proto.ARRAYS]
    server_round = int(msg.content.config_records[proto.CONFIG][proto.SERVER_ROUND])  # type: ignore[arg-type]
    local = {k: Array(v) for k, v in _local(arrays, context.node_id, server_round).items()}
    return _reply(msg, context, {proto.ARRAYS: ArrayRecord(local)})  # type: ignore[arg-type]


def _secure_train(msg: Message, context: Context) -> Message:
    arrays = msg.content.array_records[proto.ARRAYS]
    server_round = int(msg.content.config_records[proto.SECAGG][proto.SA_ROUND])  # type: ignore[arg-type]
    local = ArrayRecord(
        {k: Array(v) for k, v in _local(arrays, context.node_id, server_round).items()}  # type: ignore[misc]
    )
    metrics = MetricRecord({proto.NUM_EXAMPLES: _examples(context.node_id)})
    records = secagg.masked_update(msg, context, arrays, local, metrics, CLIP, identity=IDENTITY)
    return _reply(msg, context, records)  # type: ignore[arg-type]


def _run(strategy: SiteRecords, secure: bool, rounds: int) -> tuple[ArrayRecord, ArrayRecord]:
    """``rounds`` rounds over an in-process grid: (initial model, final model)."""
    instruction(NODES[0], RecordDict())  # sets Flower's task identity for messages
    handlers: dict[str, Handler] = {"train": _secure_train if secure else _plain_train}
    handlers.update({f"train.{k}": v for k, v in secagg.handlers(IDENTITY).items()})
    grid = LoopbackGrid(NODES, handlers)
    torch.manual_seed(0)
    initial = current = to_arrays(TabularModel(3, 2))
    for server_round in range(1, rounds + 1):
        messages = strategy.configure_train(server_round, current, ConfigRecord(), grid)
        arrays, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages))
        assert arrays is not None and strategy.logs[server_round].rejected == {}
        current = arrays
    return initial, current


def _adam_by_hand(initial: ArrayRecord, rounds: int) -> dict[str, np.ndarray]:
    """FedAdam (Reddi et al. 2021, Alg. 2, with Flower's bias correction) on the example-
    weighted mean of the sites' models, in float64."""
    x = {k: a.numpy().astype(np.float64) for k, a in initial.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros_like(a) for k, a in x.items()}
    total = sum(_examples(n) for n in NODES)
    for t in range(1, rounds + 1):
        here = ArrayRecord({k: Array(a.astype(np.float32)) for k, a in x.items()})
        locals_ = {n: _local(here, n, t) for n in NODES}
        for k in x:
            mean = sum(locals_[n][k].astype(np.float64) * _examples(n) for n in NODES) / total
            delta = mean - x[k]
            m[k] = BETA1 * m[k] + (1 - BETA1) * delta
            v[k] = BETA2 * v[k] + (1 - BETA2) * delta**2
            step = ETA * np.sqrt(1 - BETA2 ** (t + 1)) / (1 - BETA1 ** (t + 1))
            x[k] = x[k] + step * m[k] / (np.sqrt(v[k]) + TAU)
    return x


def _fedadam(cfg: RunConfig) -> SiteRecords:
    strategy = build_strategy(cfg)
    assert isinstance(strategy.strategy, FedAdam)
    assert (strategy.strategy.beta_1, strategy.strategy.beta_2) == (BETA1, BETA2)
    assert strategy.strategy.tau == TAU
    return strategy


@pytest.mark.parametrize("secure", [False, True])
def test_fedadam_takes_adam_steps_on_the_mean(config: Any, secure: bool) -> None:
    """Over plain averaging the step equals Adam by hand to float32 precision; over SecAgg+
    the mean carries quantization error (one level: 2 * clip / 2**24), so within that."""
    cfg = config(strategy="fedadam", server_learning_rate=ETA, secagg=secure, num_sites=len(NODES))
    initial, final = _run(_fedadam(cfg), secure, rounds=3)
    expected = _adam_by_hand(initial, rounds=3)
    tolerance = 1e-6 if not secure else 3 * 2 * CLIP / 2**QUANTIZATION_BITS / TAU * ETA
    for key, value in expected.items():
        assert final[key].dtype == initial[key].dtype  # the global model keeps float32
        np.testing.assert_allclose(final[key].numpy(), value, rtol=0, atol=tolerance)
    # Not the mean itself: FedAvg from the same start ends elsewhere.
    plain = build_strategy(config(secagg=secure, num_sites=len(NODES)))
    _, averaged = _run(plain, secure, rounds=3)
    assert any(
        np.abs(averaged[k].numpy() - final[k].numpy()).max() > 100 * tolerance for k in final
    )


def test_fedprox_averages_like_fedavg_at_the_server(config: Any) -> None:
    cfg = config(strategy="fedprox", proximal_mu=0.1, secagg=False, num_sites=len(NODES))
    strategy = build_strategy(cfg)
    assert isinstance(strategy.strategy, FedProx) and strategy.strategy.proximal_mu == 0.1
    _, prox = _run(strategy, secure=False, rounds=2)
    _, avg = _run(build_strategy(config(secagg=False, num_sites=len(NODES))), False, rounds=2)
    for key in avg:  # (the sites are sampled in random order: float sums may differ in the ulp)
        np.testing.assert_allclose(prox[key].numpy(), avg[key].numpy(), rtol=1e-6, atol=1e-7)


def test_the_registry_matches_the_names_the_config_accepts() -> None:
    assert tuple(STRATEGIES) == fedllm_config.STRATEGIES
    assert STRATEGIES["fedavg"] is FedAvg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategy": "fedyogi"}, "`strategy` must be one of fedavg, fedadam, fedprox, got 'fed"),
        ({"server-learning-rate": 0.0}, "`server-learning-rate` must be > 0, got 0.0"),
        ({"strategy": "fedprox", "proximal-mu": -1.0}, "`proximal-mu` must be >= 0, got -1.0"),
        ({"proximal-mu": 0.5}, "`proximal-mu` is 0.5 but `strategy` is 'fedavg'"),
    ],
)
def test_bad_strategy_settings_are_refused_naming_key_and_value(
    defaults: dict[str, Any], values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_flower({**defaults, **values})
