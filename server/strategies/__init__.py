"""The server strategies, by the name `strategy` takes in the run config.

A strategy is one class in one file over :class:`~server.strategies.averaged.Averaged` (so it
runs over plain or secure averaging alike) with a ``from_config``; adding one is that file and
one entry in :data:`STRATEGIES`. :func:`build_strategy` assembles what a run uses: the
averaging (SecAgg+ unless `secagg = false`), the named strategy over it, and the site records
around both.
"""

from __future__ import annotations

from logging import INFO
from typing import Any

from flwr.common.logger import log

from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.errors import ConfigError
from fedllm.evaluation import SiteEvaluation
from fedllm.secagg import SecAggSettings
from server.aggregation import Averaging, PlainAveraging
from server.client_dp import ClientLevelDP
from server.recorder import RunRecorder
from server.secagg import SecureAveraging
from server.site_records import SiteRecords
from server.strategies.averaged import Averaged
from server.strategies.fedadam import FedAdam
from server.strategies.fedavg import FedAvg
from server.strategies.fedprox import FedProx
from server.strategies.from_round import FromRound

STRATEGIES: dict[str, type[Averaged]] = {
    "fedavg": FedAvg,
    "fedadam": FedAdam,
    "fedprox": FedProx,
}


def strategy_class(name: str) -> type[Averaged]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"`strategy` must be one of {', '.join(STRATEGIES)}, got {name!r}"
        ) from None


def build_strategy(cfg: RunConfig, recorder: RunRecorder | None = None) -> SiteRecords:
    """The run's strategy, averaging and site records; each round goes to ``recorder``."""
    cls = strategy_class(cfg.strategy)
    client_dp = ClientLevelDP.for_run(cfg)
    # Site-level DP: every site weighs the same in the sum (evaluation still by examples).
    weight_key = proto.CLIENT_DP_WEIGHT if client_dp is not None else proto.NUM_EXAMPLES
    averaging: Averaging = (
        SecureAveraging(
            SecAggSettings(cfg.secagg_shares, cfg.secagg_threshold),
            cfg.secagg_clip_range,
            cfg.round_timeout,
            weight_key,
        )
        if cfg.secagg
        else PlainAveraging(weight_key)
    )
    sampling: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": cfg.min_available_nodes,
    }
    strategy = cls.from_config(cfg, averaging, sampling)
    if recorder is not None:  # each round's checkpoint holds the strategy's state
        recorder.strategy_state = strategy.state
    log(
        INFO,
        "fedllm: strategy %s, secure aggregation %s",
        cfg.strategy,
        "on (SecAgg+)" if cfg.secagg else "OFF",
    )
    return SiteRecords(strategy, averaging, recorder, client_dp, SiteEvaluation.for_run(cfg))


__all__ = [
    "STRATEGIES",
    "Averaged",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FromRound",
    "build_strategy",
]
