"""FedAvg weighted by examples that keeps each site's report, drops invalid updates and
records sites that refuse to train (their budget, policy or ledger) without failing the round."""

from __future__ import annotations

from collections.abc import Iterable
from logging import ERROR, INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAvg

from fedllm import metrics as m
from fedllm import protocol as proto
from fedllm.errors import FedLLMError, UpdateError
from fedllm.privacy.client_dp import ClientDPAccountant
from fedllm.weights import check_arrays


def site_name(msg: Message) -> str:
    """The site's own name from its reply, or its node id when it sent none."""
    if msg.has_content() and proto.SITE in msg.content.config_records:
        return str(msg.content.config_records[proto.SITE][proto.SITE_NAME])
    return f"node-{msg.metadata.src_node_id}"


def reason(msg: Message) -> str:
    """The last line of an error reply (the exception's message, not Ray's trace)."""
    lines = [line.strip() for line in str(msg.error.reason).splitlines() if line.strip()]
    return lines[-1][:400] if lines else "unknown error"


class NoSiteCanTrain(FedLLMError):
    """Every sampled site refused the round (budget spent, policy, ledger): the run stops."""

    def __init__(self, server_round: int, refusals: dict[str, dict[str, str]]) -> None:
        self.server_round = server_round
        self.refusals = refusals
        why = "; ".join(
            f"{site} ({r[proto.REFUSAL_KIND]}): {r[proto.REFUSAL_REASON]}"
            for site, r in refusals.items()
        )
        super().__init__(f"round {server_round}: no sampled site can train: {why}")


class SiteLevelBudgetSpent(FedLLMError):
    """The next round would take the site-level (client) epsilon past `client-epsilon`."""

    def __init__(self, server_round: int, spent: float, after: float, target: float) -> None:
        self.server_round = server_round
        self.refusals: dict[str, dict[str, str]] = {}  # no site refused: the run's budget did
        super().__init__(
            f"round {server_round} would take the site-level epsilon from {spent:.4f} to "
            f"{after:.4f}, above `client-epsilon` {target}"
        )


def refusal(msg: Message) -> dict[str, str] | None:
    """A site's refusal to train (kind and reason), or None when it trained."""
    record = None if msg.has_error() else msg.content.config_records.get(proto.REFUSAL)
    if record is None:
        return None
    return {
        proto.REFUSAL_KIND: str(record.get(proto.REFUSAL_KIND, "privacy")),
        proto.REFUSAL_REASON: str(record.get(proto.REFUSAL_REASON, ""))[:400],
    }


def aggregate_train_metrics(replies: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean of losses; epsilon is the maximum over sites, never an average."""
    total = sum(float(r[proto.METRICS][weight_key]) for r in replies)  # type: ignore[arg-type]
    out = MetricRecord({weight_key: int(total)})
    loss = sum(
        float(r[proto.METRICS][proto.TRAIN_LOSS]) * float(r[proto.METRICS][weight_key])  # type: ignore[arg-type]
        for r in replies
    )
    out[proto.TRAIN_LOSS] = loss / total if total else float("nan")
    if all(proto.EPSILON in r[proto.METRICS] for r in replies):
        out[proto.EPSILON] = max(float(r[proto.METRICS][proto.EPSILON]) for r in replies)  # type: ignore[arg-type]
    return out


class SiteAwareFedAvg(FedAvg):
    """FedAvg (McMahan et al. 2017) that records per-site train/eval metrics each round and
    refuses replies whose arrays do not match the current global model.

    With ``client_dp`` (site-level DP), every site weighs the same, each round's released sum
    is accounted at its realized noise, and a round that would exceed the site-level budget
    is not started (:class:`SiteLevelBudgetSpent`)."""

    def __init__(self, client_dp: ClientDPAccountant | None = None, **kwargs: Any) -> None:
        super().__init__(train_metrics_aggr_fn=aggregate_train_metrics, **kwargs)
        self.client_dp = client_dp
        self.client_sampled: dict[int, int] = {}  # round -> sites sharing the noise
        self.client_rounds: dict[int, dict[str, float | int | None]] = {}
        self.current: ArrayRecord | None = None
        self.site_train: dict[int, dict[str, dict[str, float]]] = {}
        self.site_eval: dict[int, dict[str, dict[str, float]]] = {}
        self.site_refused: dict[int, dict[str, dict[str, str]]] = {}
        # Updates (or a whole aggregate) refused by validation: site (or "aggregate") -> why.
        self.site_rejected: dict[int, dict[str, str]] = {}
        # Sites that were sent a message and did not answer it (killed, disconnected, timed
        # out), by name where an earlier reply told us the node's name.
        self.site_dropped: dict[int, dict[str, str]] = {}
        self.node_names: dict[int, str] = {}
        self._sent: dict[str, set[int]] = {}
        self._silent: dict[int, set[int]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any
    ) -> Iterable[Message]:
        self.current = arrays
        dp = self.client_dp
        if dp is not None:
            after = dp.epsilon_after_full_round()
            if after > dp.target_epsilon:
                raise SiteLevelBudgetSpent(server_round, dp.epsilon, after, dp.target_epsilon)
        messages = self._sending(
            "train", super().configure_train(server_round, arrays, config, grid)
        )
        if dp is not None:  # the sites split the noise among the sampled (one shared record)
            config[proto.CLIENT_DP_SAMPLED] = self.client_sampled[server_round] = len(messages)
        return messages

    def account_client_dp(self, server_round: int, summed: int) -> None:
        """Step the site-level accountant for a sum of ``summed`` sites that the server saw
        (0: nothing released, nothing spent); the round's figures go to ``client_rounds``."""
        dp = self.client_dp
        if dp is None:
            return
        sampled = self.client_sampled.get(server_round, 0)
        z = dp.record(summed, sampled) if summed > 0 else None
        self.client_rounds[server_round] = {
            m.CLIENT_EPSILON: dp.epsilon,
            m.CLIENT_NOISE_MULTIPLIER: z,
            m.CLIENT_CLIP: dp.clip,
            m.CLIENT_SUMMED: summed,
            proto.CLIENT_DP_SAMPLED: sampled,
        }
        log(
            INFO,
            "client-dp: round %d, sum of %d of %d sampled sites at noise multiplier %s: "
            "site-level epsilon %.4f (target %s, delta %g)",
            server_round,
            summed,
            sampled,
            "-" if z is None else f"{z:.4f}",
            dp.epsilon,
            dp.target_epsilon,
            dp.delta,
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any
    ) -> Iterable[Message]:
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        # A site that did not answer this round's training is not waited for again.
        silent = self._silent.get(server_round, set())
        return self._sending(
            "evaluate", [msg for msg in messages if msg.metadata.dst_node_id not in silent]
        )

    def _sending(self, stage: str, messages: Iterable[Message]) -> list[Message]:
        sent = list(messages)
        self._sent[stage] = {msg.metadata.dst_node_id for msg in sent}
        return sent

    def _note_dropped(
        self,
        stage: str,
        server_round: int,
        replies: list[Message],
        known: dict[int, str] | None = None,
    ) -> None:
        """Names every sampled site that did not reply (or replied with a transport error),
        in the log and in ``site_dropped``; the round goes on with the others. ``known``: why
        a node was lost earlier in the stage (e.g. in secure aggregation's key sharing)."""
        answered = {msg.metadata.src_node_id for msg in replies if not msg.has_error()}
        for msg in replies:
            if not msg.has_error() and proto.SITE in msg.content.config_records:
                self.node_names[msg.metadata.src_node_id] = site_name(msg)
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
            self.site_dropped.setdefault(server_round, {})[name] = f"{stage}: {why}"
            self._silent.setdefault(server_round, set()).add(node)

    def refusals(self, server_round: int) -> dict[str, dict[str, str]]:
        return self.site_refused.get(server_round, {})

    def rejections(self, server_round: int) -> dict[str, str]:
        return self.site_rejected.get(server_round, {})

    def reject(self, server_round: int, who: str, why: str) -> None:
        """Record a refused update (or aggregate); the global model stays as it was."""
        log(ERROR, "Rejected %s in round %d: %s", who, server_round, why)
        self.site_rejected.setdefault(server_round, {})[who] = why

    def validated(self, server_round: int, arrays: ArrayRecord | None) -> ArrayRecord | None:
        """The aggregate if it matches the global model (keys, shapes, dtypes, finite), else
        None: the caller keeps the previous global model and the run goes on."""
        if arrays is None or self.current is None:
            return arrays
        try:
            check_arrays(self.current, arrays)
        except UpdateError as err:
            self.reject(server_round, "aggregate", f"{err}; keeping the previous global model")
            return None
        return arrays

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._note_dropped("train", server_round, replies)
        accepted = []
        refused: dict[str, dict[str, str]] = {}
        for msg in replies:
            why = refusal(msg)
            if why is not None:
                refused[site_name(msg)] = why
                continue
            if msg.has_error():
                accepted.append(msg)  # FedAvg logs and skips it
                continue
            try:
                arrays = msg.content.array_records.get(proto.ARRAYS)
                if arrays is None or self.current is None:
                    raise UpdateError("reply carries no model arrays")
                check_arrays(self.current, arrays)
            except UpdateError as err:
                self.reject(server_round, f"update from {site_name(msg)}", str(err))
                continue
            accepted.append(msg)
        self.site_refused[server_round] = dict(sorted(refused.items()))
        if not accepted and refused:
            raise NoSiteCanTrain(server_round, self.site_refused[server_round])
        if not any(not msg.has_error() for msg in accepted) and self.rejections(server_round):
            log(WARNING, "round %d: no valid update; keeping the global model", server_round)
            return None, None
        if not any(not msg.has_error() for msg in accepted):
            reasons = [reason(msg) for msg in accepted if msg.has_error()]
            raise FedLLMError(
                f"round {server_round}: no site returned a valid update"
                + (f"; first error: {reasons[0]}" if reasons else "")
            )
        self.site_train[server_round] = {
            site_name(msg): dict(msg.content[proto.METRICS])
            for msg in accepted
            if not msg.has_error()  # type: ignore[arg-type]
        }
        weighted_by = self.weighted_by_key
        if self.client_dp is not None:  # training only: sites weigh 1 each (evaluation: examples)
            self.weighted_by_key = proto.CLIENT_DP_WEIGHT
        try:
            arrays, metrics = super().aggregate_train(server_round, accepted)
        finally:
            self.weighted_by_key = weighted_by
        if arrays is not None:  # the server has seen each summed site's noised update
            self.account_client_dp(server_round, len(self.site_train[server_round]))
        return self.validated(server_round, arrays), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._note_dropped("evaluate", server_round, replies)
        # A site that refused (e.g. its data does not fit the task) has no scores to average.
        replies = [msg for msg in replies if refusal(msg) is None]
        self.site_eval[server_round] = {
            site_name(msg): dict(msg.content[proto.METRICS])
            for msg in replies
            if not msg.has_error()  # type: ignore[arg-type]
        }
        return super().aggregate_evaluate(server_round, replies)
