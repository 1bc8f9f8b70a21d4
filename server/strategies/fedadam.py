"""FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization"): Adam at the server.

The mean of the sites' models (plain or secure) gives the pseudo-gradient
``delta = mean - global``; Flower's FedAdam keeps the moments ``m = b1 m + (1 - b1) delta``,
``v = b2 v + (1 - b2) delta^2`` and moves the global model by
``eta * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) * m / (sqrt(v) + tau)``. It needs only the
mean, so it runs unchanged over secure aggregation; under DP it is post-processing of the
sites' private updates and costs no epsilon.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy as flwr_strategy

from fedllm.config import RunConfig
from server.aggregation import Averaging
from server.strategies.averaged import Averaged


class FedAdam(flwr_strategy.FedAdam, Averaged):
    """Flower's FedAdam over fedllm's averaging (its ``super().aggregate_train`` reaches
    :class:`Averaged`). Server learning rate ``eta``; Flower's beta1 0.9, beta2 0.99,
    tau 1e-3."""

    def __init__(self, averaging: Averaging, eta: float, **sampling: Any) -> None:
        self.averaging = averaging
        super().__init__(eta=eta, **sampling)

    @classmethod
    def from_config(cls, cfg: RunConfig, averaging: Averaging, sampling: dict[str, Any]) -> Self:
        return cls(averaging, cfg.server_learning_rate, **sampling)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self.current_arrays is None:
            return arrays, metrics
        # Flower's step is computed in float64; the global model keeps the sites' dtypes.
        dtypes = {k: v.dtype for k, v in self.current_arrays.items()}
        return (
            ArrayRecord({k: Array(np.asarray(a.numpy(), dtypes[k])) for k, a in arrays.items()}),
            metrics,
        )
