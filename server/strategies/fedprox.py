"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

At the server FedProx is FedAvg; each site minimizes its loss plus ``mu/2 ||w - w_global||^2``
(``fedllm/training.py``, with ``mu`` = the run's `proximal-mu`), which keeps local models of
heterogeneous sites near the global one. Flower's FedProx also puts `proximal-mu` in the train
config; fedllm's sites take it from the run config, as every other training parameter.
"""

from __future__ import annotations

from typing import Any, Self

from flwr.serverapp import strategy as flwr_strategy

from fedllm.config import RunConfig
from server.aggregation import Averaging
from server.strategies.averaged import Averaged


class FedProx(flwr_strategy.FedProx, Averaged):
    """Flower's FedProx over fedllm's averaging (plain or secure)."""

    def __init__(self, averaging: Averaging, proximal_mu: float, **sampling: Any) -> None:
        self.averaging = averaging
        super().__init__(proximal_mu=proximal_mu, **sampling)

    @classmethod
    def from_config(cls, cfg: RunConfig, averaging: Averaging, sampling: dict[str, Any]) -> Self:
        return cls(averaging, cfg.proximal_mu, **sampling)
