"""The record of every round, site by site, kept around a strategy (as Flower's DP strategies
wrap any strategy).

:class:`SiteRecords` sends what the inner strategy configures and hands it the replies it can
sum; on the way it notes who trained, refused, dropped out or sent an update that does not
fit, decides when a round has nothing to sum, runs site-level DP's stop rule and accounting,
and checks the new global model. After each round's central evaluation it hands the round's
:class:`~server.round_log.RoundLog` to the run recorder. A run that the sites' budgets end
early (:class:`~server.replies.NoSiteCanTrain`, :class:`~server.client_dp.SiteLevelBudgetSpent`)
is not a failure: :meth:`SiteRecords.start` records why and returns the last global model.

The sites evaluate the global models the run's :class:`~fedllm.evaluation.SiteEvaluation`
names (every round without DP; under DP only the last `site-evaluations`, each a noised release
at every site): where it can, a round's train message carries the evaluation of the model it
sends, and only the last model gets an evaluate message of its own. A noised evaluation comes
back as two noised sums per site (accuracies, count); the federated accuracy is their ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedllm import protocol as proto
from fedllm.audit.observed import ObservedUpdates
from fedllm.errors import FedLLMError, UpdateError
from fedllm.evaluation import SiteEvaluation
from fedllm.weights import check_arrays
from server.aggregation import AggregateRejected, Averaging
from server.client_dp import ClientLevelDP, SiteLevelBudgetSpent
from server.grid import NodesAsOf, connected
from server.recorder import RunRecorder
from server.replies import (
    NoSiteCanTrain,
    TrainReplies,
    reason,
    refusal,
    site_name,
    sort_train_replies,
)
from server.round_log import RoundLog

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class SiteRecords(Strategy):
    """``strategy`` (whose mean ``averaging`` forms) with every round recorded by site.

    ``recorder`` receives each finished round (None: the logs stay in :attr:`logs` only);
    ``client_dp``: site-level DP, whose sums every site weighs the same in; ``evaluation``:
    which models the sites evaluate and how (None: as the inner strategy configures it)."""

    def __init__(
        self,
        strategy: Strategy,
        averaging: Averaging,
        recorder: RunRecorder | None = None,
        client_dp: ClientLevelDP | None = None,
        evaluation: SiteEvaluation | None = None,
    ) -> None:
        self.strategy = strategy
        self.averaging = averaging
        self.recorder = recorder
        self.client_dp = client_dp
        self.evaluation = evaluation
        self.logs: dict[int, RoundLog] = {}
        self.node_names: dict[int, str] = {}  # learnt from replies: dropouts are named
        self._global: ArrayRecord | None = None  # the model this round started from
        self._latest: ArrayRecord | None = None  # the global model after the last round
        self._sent: dict[str, set[int]] = {}  # stage -> nodes asked
        self._silent: set[int] = set()  # nodes that did not answer this round's training
        self.observed = (  # `fedllm audit` only: each site's plain updates, for its attacker
            ObservedUpdates.for_run(recorder.cfg, recorder.run_dir) if recorder else None
        )

    def summary(self) -> None:
        log(INFO, "\t├──> fedllm: each round recorded by site (%s)", type(self.averaging).__name__)
        self.strategy.summary()

    # ------------------------------------------------------------------ training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global, self._silent = arrays, set()
        record = self.logs[server_round] = RoundLog(server_round)
        if self.client_dp is not None:
            self.client_dp.before_round(server_round)
        # The train message may carry the evaluation of the model it sends (the last round's).
        if self.evaluation is not None and self.evaluation.carried_by(server_round):
            config[proto.EVALUATE_INCOMING] = True
        elif proto.EVALUATE_INCOMING in config:
            del config[proto.EVALUATE_INCOMING]
        # The sample is sized and drawn on one list of connected nodes (NodesAsOf).
        nodes = connected(grid, self._needed("min_train_nodes"))
        try:
            messages = list(
                self.strategy.configure_train(server_round, arrays, config, NodesAsOf(grid, nodes))
            )
        except AggregateRejected as err:  # e.g. too few sites finished key sharing
            self._reject(record, err.who, err.why)
            messages = []
        lost = set(self.averaging.lost_before_training())
        self._sent["train"] = {msg.metadata.dst_node_id for msg in messages} | lost
        if messages or lost:  # a rejected round's reason stands for every site
            self._note_left_out(record, nodes, self._sent["train"])
        if self.client_dp is not None and messages:  # the sites split the noise among these
            self.client_dp.sampled(server_round, len(messages), config, len(messages) + len(lost))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record = self.logs[server_round]
        self._note_dropped("train", server_round, replies, self.averaging.lost_before_training())
        current = self._global
        if current is None:
            raise FedLLMError(f"round {server_round}: replies before any train message")
        sorted_ = sort_train_replies(replies, lambda msg: self.averaging.problem(msg, current))
        record.refused = sorted_.refused
        for who, why in sorted_.rejected.items():
            self._reject(record, who, why)
        if not sorted_.valid:
            self._nothing_to_sum(server_round, record, sorted_)
            return None, None
        record.trained = dict(
            sorted((site_name(msg), _numbers(_metrics(msg))) for msg in sorted_.valid)
        )
        if self.observed is not None:  # `fedllm audit`, plain updates: what the server received
            for msg in sorted_.valid:
                self.observed.add(site_name(msg), msg.content.array_records[proto.ARRAYS], current)
        if self.evaluation is not None and self.evaluation.carried_by(server_round):
            self._carried_evaluation(server_round - 1, sorted_.valid)
        released = len(sorted_.valid)  # the server has seen their (noised) updates, or the sum
        arrays: ArrayRecord | None
        try:
            arrays, metrics = self.strategy.aggregate_train(server_round, sorted_.valid)
        except AggregateRejected as err:
            self._reject(record, err.who, err.why)
            arrays, metrics, released = None, None, err.released
        if self.client_dp is not None and released:
            record.client_dp = self.client_dp.released(server_round, released)
        if arrays is not None:
            try:
                check_arrays(current, arrays)
            except UpdateError as err:
                self._reject(record, "aggregate", f"{err}; keeping the previous global model")
                return None, metrics
        return arrays, metrics

    def _needed(self, minimum: str) -> int:
        """The connected nodes the inner strategy waits for before it samples (Flower's
        ``min_available_nodes``, and ``minimum``: its smallest sample)."""
        return max(
            int(getattr(self.strategy, "min_available_nodes", 0)),
            int(getattr(self.strategy, minimum, 0)),
        )

    def _note_left_out(self, record: RoundLog, nodes: list[int], asked: set[int]) -> None:
        """Why each site not asked to train this round was left out: connected but not in the
        sample (``fraction-train``), or not connected when the round sampled (a site known from
        an earlier round)."""
        fraction = getattr(self.strategy, "fraction_train", None)
        for node in sorted(set(nodes) - asked):
            record.left_out[self.node_names.get(node, f"node-{node}")] = (
                f"not sampled: {len(asked)} of the {len(nodes)} connected sites were"
                + (f" (fraction-train {fraction})" if fraction is not None else "")
            )
        present = {self.node_names[n] for n in nodes if n in self.node_names}
        for name in sorted(set(self.node_names.values()) - present):
            record.left_out[name] = "not connected to the SuperLink when the round sampled"

    def _nothing_to_sum(self, server_round: int, record: RoundLog, replies: TrainReplies) -> None:
        """No update to sum: the run stops when every site refused, goes on with the global
        model when updates were rejected, and fails when the sites only failed."""
        if replies.refused and not replies.errors:
            raise NoSiteCanTrain(server_round, replies.refused)
        if record.rejected:
            log(WARNING, "round %d: no valid update; keeping the global model", server_round)
            return
        reasons = [reason(msg) for msg in replies.errors]
        raise FedLLMError(
            f"round {server_round}: no site returned a valid update"
            + (f"; first error: {reasons[0]}" if reasons else "")
        )

    def _reject(self, record: RoundLog, who: str, why: str) -> None:
        """An update (or the aggregate) refused; the global model stays as it was."""
        log(WARNING, "Rejected %s in round %d: %s", who, record.server_round, why)
        record.rejected[who] = why

    # ------------------------------------------------------------------ evaluation
    def _carried_evaluation(self, evaluated_round: int, replies: list[Message]) -> None:
        """The sites' evaluation of round ``evaluated_round``'s model, carried by this round's
        train replies: filed under that round (whose record is amended)."""
        record = self.logs.get(evaluated_round)
        if record is None:
            return
        record.evaluated = dict(
            sorted(
                (site_name(msg), _numbers(msg.content.metric_records[proto.EVALUATION]))
                for msg in replies
                if proto.EVALUATION in msg.content.metric_records
            )
        )
        if self.recorder is not None:
            self.recorder.amend_evaluation(record)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.evaluation is not None and not self.evaluation.own_message(server_round):
            return []  # not evaluated at the sites, or carried by the next train message
        nodes = connected(grid, self._needed("min_evaluate_nodes"))
        messages = self.strategy.configure_evaluate(
            server_round, arrays, config, NodesAsOf(grid, nodes)
        )
        # A site that did not answer this round's training is not waited for again.
        sent = [msg for msg in messages if msg.metadata.dst_node_id not in self._silent]
        self._sent["evaluate"] = {msg.metadata.dst_node_id for msg in sent}
        return sent

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._note_dropped("evaluate", server_round, replies)
        # A site that refused (its policy, its data) has no scores to average.
        for msg in replies:
            why = refusal(msg)
            if why is not None:
                log(
                    WARNING,
                    "round %d: %s refused to evaluate (%s): %s",
                    server_round,
                    site_name(msg),
                    why.kind,
                    why.reason,
                )
        replies = [msg for msg in replies if refusal(msg) is None]
        record = self.logs[server_round]
        record.evaluated = dict(
            sorted(
                (site_name(msg), _numbers(_metrics(msg))) for msg in replies if not msg.has_error()
            )
        )
        if any(proto.CORRECT in values for values in record.evaluated.values()):
            # Noised sums (weights that may be negative): the ratio of their totals.
            accuracy = record.federated_accuracy()
            return None if accuracy is None else MetricRecord({proto.ACCURACY: accuracy})
        return self.strategy.aggregate_evaluate(server_round, replies)

    def _note_dropped(
        self,
        stage: str,
        server_round: int,
        replies: list[Message],
        known: dict[int, str] | None = None,
    ) -> None:
        """Name every node asked in ``stage`` that did not answer (or answered with an error)
        in the log and the round's record; ``known``: why a node was lost earlier (e.g. in
        secure aggregation's key sharing). The round goes on with the others."""
        for msg in replies:
            if not msg.has_error() and proto.SITE in msg.content.config_records:
                self.node_names[msg.metadata.src_node_id] = site_name(msg)
        answered = {msg.metadata.src_node_id for msg in replies if not msg.has_error()}
        errors = dict(known or {})
        errors.update({msg.metadata.src_node_id: reason(msg) for msg in replies if msg.has_error()})
        for node in sorted(self._sent.pop(stage, set()) - answered):
            name = self.node_names.get(node, f"node-{node}")
            why = errors.get(node, "no reply before the round timeout")
            log(
                WARNING,
                "fedllm: site %s dropped out of round %d (%s): %s",
                name,
                server_round,
                stage,
                why,
            )
            self.logs[server_round].dropped[name] = f"{stage}: {why}"
            self._silent.add(node)

    # ------------------------------------------------------------------ the run
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        first_round: int = 1,
    ) -> Result:
        """Flower's round loop; after each round's central evaluation (``evaluate_fn``, which
        only evaluates) the round goes to the recorder. ``Result.arrays``: the last global
        model, also when the sites' budgets ended the run early. ``first_round`` > 1: a
        resumed run, whose rounds before it are done (``initial_arrays``: the model after
        them)."""
        from server.strategies.from_round import FromRound  # the package imports this module

        self._latest = initial_arrays

        def evaluated(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            scores = evaluate_fn(server_round, arrays) if evaluate_fn is not None else None
            self._latest = arrays
            self._close(server_round, scores, arrays)
            return scores

        loop = super().start if first_round == 1 else FromRound(self, first_round).start
        try:
            result = loop(
                grid=grid,
                initial_arrays=initial_arrays,
                num_rounds=num_rounds,
                timeout=timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=evaluated,
            )
        except (NoSiteCanTrain, SiteLevelBudgetSpent) as stop:
            # Not a failure: the sites' own budgets (or the site-level budget) ended the run.
            log(WARNING, "fedllm: stopping early: %s", stop)
            if self.recorder is not None:
                self.recorder.stop(stop.server_round, str(stop), stop.refusals)
            result = Result()
        result.arrays = self._latest
        return result

    def _close(self, server_round: int, scores: MetricRecord | None, arrays: ArrayRecord) -> None:
        central = _numbers(scores) if scores is not None else {}
        if server_round == 0:
            if self.recorder is not None:
                self.recorder.initial(central)
            return
        record = self.logs[server_round]
        if self.client_dp is not None and record.client_dp is None:
            record.client_dp = self.client_dp.unchanged()
        if self.recorder is not None:
            self.recorder.record_round(record, central, arrays)


def _metrics(msg: Message) -> MetricRecord:
    return msg.content.metric_records[proto.METRICS]


def _numbers(record: MetricRecord) -> dict[str, float]:
    """The record's scalar metrics as floats (a list-valued metric is not a per-round figure)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
