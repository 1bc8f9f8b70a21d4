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
from fedllm.errors import CheckpointError
from server.aggregation import Averaging
from server.strategies.averaged import Averaged

MOMENT_M, MOMENT_V = "m", "v"  # names of Adam's moments in the run's checkpoint


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

    def state(self) -> ArrayRecord:
        """Adam's moments ``m`` and ``v`` (none before the first aggregated round)."""
        moments = {MOMENT_M: self.m_t or {}, MOMENT_V: self.v_t or {}}
        return ArrayRecord(
            {
                f"{m}.{k}": Array(np.asarray(v))
                for m, values in moments.items()
                for k, v in values.items()
            }
        )

    def restore(self, state: ArrayRecord, model: ArrayRecord) -> None:
        """Both moments, each with exactly the model's arrays and shapes, or neither."""
        moments: dict[str, dict[str, np.ndarray]] = {MOMENT_M: {}, MOMENT_V: {}}
        for name, array in state.items():
            moment, _, key = name.partition(".")
            if moment not in moments:
                raise CheckpointError(f"FedAdam's state has an unknown array {name!r}")
            moments[moment][key] = array.numpy()
        shapes = {k: a.numpy().shape for k, a in model.items()}
        for moment, values in moments.items():
            if values and {k: v.shape for k, v in values.items()} != shapes:
                raise CheckpointError(
                    f"FedAdam's moment {moment!r} in the checkpoint does not fit the model's arrays"
                )
        if bool(moments[MOMENT_M]) != bool(moments[MOMENT_V]):
            raise CheckpointError("the checkpoint holds only one of FedAdam's two moments")
        self.m_t = moments[MOMENT_M] or None
        self.v_t = moments[MOMENT_V] or None
