"""FedAvg (McMahan et al. 2017): the new global model is the weighted mean of the updates."""

from __future__ import annotations

from typing import Any, Self

from fedllm.config import RunConfig
from server.aggregation import Averaging
from server.strategies.averaged import Averaged


class FedAvg(Averaged):
    """The mean of the sampled sites' models, weighted by their examples (site-level DP: by
    site), formed in the clear or over SecAgg+ as ``averaging`` says."""

    def __init__(self, averaging: Averaging, **sampling: Any) -> None:
        self.averaging = averaging
        super().__init__(**sampling)

    @classmethod
    def from_config(cls, cfg: RunConfig, averaging: Averaging, sampling: dict[str, Any]) -> Self:
        return cls(averaging, **sampling)
