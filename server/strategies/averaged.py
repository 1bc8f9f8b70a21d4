"""The base of fedllm's server strategies: Flower's FedAvg whose mean comes from an
:class:`~server.aggregation.Averaging` (in the clear, or over SecAgg+).

A server rule written as a Flower strategy over FedAvg (Flower's FedAdam, FedProx, ...) joins
by cooperative inheritance: ``class FedAdam(flwr FedAdam, Averaged)`` puts this class between
Flower's FedOpt and FedAvg, so FedAdam's ``super().aggregate_train`` reaches the averaging here
and its Adam step is applied to the (secure) mean. The replies it is handed are already sorted
(:class:`server.site_records.SiteRecords`): every one of them is summed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedllm.config import RunConfig
from fedllm.errors import CheckpointError
from server.aggregation import Averaging


class Averaged(FedAvg):
    """FedAvg's round with the sampling and evaluation of Flower's FedAvg and the mean of
    :attr:`averaging`. A subclass sets ``averaging`` before calling ``super().__init__``
    (Flower's strategies pass only their own keywords down the chain)."""

    averaging: Averaging
    _global: ArrayRecord | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, averaging: Averaging, sampling: dict[str, Any]) -> Self:
        """The strategy for this run: its own keys of ``cfg``, Flower's ``sampling`` keywords."""
        raise NotImplementedError(f"{cls.__name__}.from_config")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        messages = list(super().configure_train(server_round, arrays, config, grid))
        return self.averaging.configure(server_round, messages, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global is None:
            raise RuntimeError("aggregate_train before configure_train")
        return self.averaging.mean(server_round, list(replies), self._global)

    def state(self) -> ArrayRecord:
        """What the strategy carries from one round to the next besides the global model, for
        the run's checkpoint (none: FedAvg's and FedProx's rounds depend on it alone)."""
        return ArrayRecord()

    def restore(self, state: ArrayRecord, model: ArrayRecord) -> None:
        """Take back :meth:`state` from a checkpoint of a run being resumed (``model``: its
        global model); raises CheckpointError for state this strategy did not write."""
        if len(state):
            raise CheckpointError(
                f"the checkpoint holds strategy state ({', '.join(list(state)[:3])}, ...) that "
                f"{type(self).__name__} does not keep: was it written by another strategy?"
            )
