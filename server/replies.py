"""Reading the sites' replies: who sent each, whether it is a refusal or an error, and the one
place a round's train replies are sorted (every strategy, plain or secure, goes through
:func:`sort_train_replies`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Message

from fedllm import protocol as proto
from fedllm.errors import FedLLMError
from server.round_log import Refusal


def site_name(msg: Message) -> str:
    """The site's own name from its reply, or its node id when it sent none."""
    if msg.has_content() and proto.SITE in msg.content.config_records:
        return str(msg.content.config_records[proto.SITE][proto.SITE_NAME])
    return f"node-{msg.metadata.src_node_id}"


def reason(msg: Message) -> str:
    """The last line of an error reply (the exception's message, not Ray's trace)."""
    lines = [line.strip() for line in str(msg.error.reason).splitlines() if line.strip()]
    return lines[-1][:400] if lines else "unknown error"


def refusal(msg: Message) -> Refusal | None:
    """A site's refusal (kind and reason), or None when the reply is not one."""
    record = None if msg.has_error() else msg.content.config_records.get(proto.REFUSAL)
    if record is None:
        return None
    return Refusal(
        str(record.get(proto.REFUSAL_KIND, "privacy")),
        str(record.get(proto.REFUSAL_REASON, ""))[:400],
    )


class NoSiteCanTrain(FedLLMError):
    """Every sampled site refused the round (budget spent, policy, ledger): the run stops."""

    def __init__(self, server_round: int, refusals: dict[str, Refusal]) -> None:
        self.server_round = server_round
        self.refusals = refusals
        why = "; ".join(f"{site} ({r.kind}): {r.reason}" for site, r in refusals.items())
        super().__init__(f"round {server_round}: no sampled site can train: {why}")


@dataclass
class TrainReplies:
    """A round's train replies, sorted: the updates to sum, the refusals (by site), the
    replies that carry an error (a site lost mid-round), and the updates rejected (by site)."""

    valid: list[Message] = field(default_factory=list)
    refused: dict[str, Refusal] = field(default_factory=dict)
    errors: list[Message] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


def sort_train_replies(
    replies: Iterable[Message], problem: Callable[[Message], str | None]
) -> TrainReplies:
    """Sort ``replies``; ``problem`` says why a reply's update cannot be summed (wrong arrays,
    a malformed masked vector), or None when it can."""
    out = TrainReplies()
    for msg in replies:
        why = refusal(msg)
        if why is not None:
            out.refused[site_name(msg)] = why
        elif msg.has_error():
            out.errors.append(msg)
        elif (bad := problem(msg)) is not None:
            out.rejected[f"update from {site_name(msg)}"] = bad
        else:
            out.valid.append(msg)
    out.refused = dict(sorted(out.refused.items()))
    return out
