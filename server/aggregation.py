"""How the server forms the weighted mean of the sampled sites' updates: in the clear
(:class:`PlainAveraging`) or over SecAgg+ (:class:`server.secagg.SecureAveraging`).

A strategy (``server/strategies/``) asks its averaging for the mean and applies its own server
rule to it (FedAvg takes it as is; FedAdam takes an Adam step towards it). The replies it gets
are already sorted (:func:`server.replies.sort_train_replies`, with the averaging's own
:meth:`Averaging.problem` check): every one of them is summed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedllm import protocol as proto
from fedllm.errors import FedLLMError, UpdateError
from fedllm.weights import check_arrays


class AggregateRejected(FedLLMError):
    """The round's sum cannot be used (secure aggregation failed closed, weights disagree):
    the global model stays as it was. ``released``: how many sites' updates the server saw
    anyway (their sum was unmasked), which site-level DP must still account."""

    def __init__(self, who: str, why: str, released: int = 0) -> None:
        self.who, self.why, self.released = who, why, released
        super().__init__(f"{who}: {why}")


def aggregate_train_metrics(replies: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of the training losses (sent only without DP); epsilon is the maximum over
    sites, never a mean."""
    metrics = [cast(MetricRecord, r[proto.METRICS]) for r in replies]
    weights = [float(cast(float, x[weight_key])) for x in metrics]
    total = sum(weights)
    out = MetricRecord({weight_key: int(total)})
    if all(proto.TRAIN_LOSS in x for x in metrics):
        losses = [float(cast(float, x[proto.TRAIN_LOSS])) for x in metrics]
        loss = sum(value * w for value, w in zip(losses, weights, strict=True))
        out[proto.TRAIN_LOSS] = loss / total if total else float("nan")
    if all(proto.EPSILON in x for x in metrics):
        out[proto.EPSILON] = max(float(cast(float, x[proto.EPSILON])) for x in metrics)
    return out


class Averaging(ABC):
    """The mean of the sites' updates, weighted by ``weight_key`` (examples; under
    site-level DP every site weighs 1)."""

    def __init__(self, weight_key: str = proto.NUM_EXAMPLES) -> None:
        self.weight_key = weight_key

    def configure(
        self,
        server_round: int,
        messages: list[Message],
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
    ) -> list[Message]:
        """The train messages to send (plain: those the strategy made). Raises
        :class:`AggregateRejected` when the round cannot run (nothing is sent)."""
        return messages

    def lost_before_training(self) -> dict[int, str]:
        """Sampled nodes this round lost in stages of the averaging's own, before the train
        message (node id -> stage and why)."""
        return {}

    @abstractmethod
    def problem(self, msg: Message, current: ArrayRecord) -> str | None:
        """Why the update in ``msg`` (no refusal, no error) cannot be summed, or None."""

    @abstractmethod
    def mean(
        self, server_round: int, replies: list[Message], current: ArrayRecord
    ) -> tuple[ArrayRecord, MetricRecord]:
        """The weighted mean of the updates in ``replies`` (every one summed) and the round's
        train metrics; raises :class:`AggregateRejected`."""


class PlainAveraging(Averaging):
    """FedAvg's mean in the clear (McMahan et al. 2017): the server sees every update."""

    def problem(self, msg: Message, current: ArrayRecord) -> str | None:
        arrays = msg.content.array_records.get(proto.ARRAYS)
        if arrays is None:
            return "reply carries no model arrays"
        try:
            check_arrays(current, arrays)
        except UpdateError as err:
            return str(err)
        return None

    def mean(
        self, server_round: int, replies: list[Message], current: ArrayRecord
    ) -> tuple[ArrayRecord, MetricRecord]:
        if not replies:
            raise AggregateRejected("aggregate", "no update to average")
        contents = [msg.content for msg in replies]
        return (
            aggregate_arrayrecords(contents, self.weight_key),
            aggregate_train_metrics(contents, self.weight_key),
        )
