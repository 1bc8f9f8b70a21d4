"""A strategy's rounds from a given round on: how a resumed run continues under Flower's round
loop, which always counts from 1.

Flower's ``Strategy.start`` runs rounds ``1..num_rounds`` and evaluates the initial model as
round 0. :class:`FromRound` runs the wrapped strategy's rounds ``first..num_rounds`` under that
loop: Flower's round ``r`` is the run's round ``r + first - 1`` for every call (configure,
aggregate, central evaluation), so the sites, the ledgers, FedAdam's bias correction and
metrics.json all see the run's own round numbers. The model it starts from was evaluated and
recorded when its round ended, so round 0 is not evaluated again. (Flower's own log line
``[ROUND r/n]`` counts the rounds of this process.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy


class FromRound(Strategy):
    """``strategy``'s rounds ``first`` onwards."""

    def __init__(self, strategy: Strategy, first: int) -> None:
        if first < 1:
            raise ValueError(f"the first round is 1 or later, got {first}")
        self.strategy = strategy
        self.offset = first - 1

    def summary(self) -> None:
        log(INFO, "\t├──> resumed: rounds %d onwards", self.offset + 1)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's loop over the run's rounds ``first..num_rounds`` (none when the run has
        done them all)."""

        def evaluate_shifted(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0 or evaluate_fn is None:  # evaluated when its round ended
                return None
            return evaluate_fn(server_round + self.offset, arrays)

        return super().start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=max(0, num_rounds - self.offset),
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_shifted,
        )
