"""A site: load its own data, train the global model locally with DP-SGD, reply with the
update and its cumulative epsilon; evaluate a global model on its own test rows where the run
and its policy allow; send feature statistics only where its policy allows.

Every reply is checked against the release manifest (:data:`fedllm.protocol.MANIFEST`) before
it leaves: a record or key the manifest does not list for the message, in the run's mode (DP
or not, secure aggregation or not, client-level DP or not), is never sent."""

from __future__ import annotations

import re
from collections.abc import Callable
from logging import ERROR, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from clients import client_dp, secagg
from clients.site import SiteGuard
from clients.statistics import release_statistics
from clients.train import SiteRuntime, evaluate_round, node_site_name, train_round
from fedllm import protocol as proto
from fedllm.deploy import packing
from fedllm.errors import (
    DataError,
    FedLLMError,
    PolicyError,
    PrivacyError,
    UpdateError,
    refusal_kind,
)
from fedllm.privacy.chain import TRAIN


def packed_transfer(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Deployment's one-object content (:mod:`fedllm.deploy.packing`): a packed message is
    unpacked before its handler, and its reply, once the handler has checked it against the
    release manifest, packed the same way. Anything else passes as it is."""
    if not (msg.has_content() and packing.is_packed(msg.content)):
        return call_next(msg, context)
    msg.content = packing.unpack(msg.content)
    reply = call_next(msg, context)
    if reply.has_content():
        reply.content = packing.pack(reply.content)
    return reply


app = ClientApp(mods=[packed_transfer])
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")  # quoted text in an error: a value from the data


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train one round, or refuse with the reason (a reply, not an error) when the request is
    outside the site's policy, past its budget, its ledger does not verify, or the site's
    own data file does not fit the task. With ``evaluate-incoming`` the site first evaluates
    the model it was sent (in the reply's ``evaluation`` record)."""
    config = msg.content.config_records[proto.CONFIG]
    server_round = int(config[proto.SERVER_ROUND])  # type: ignore[arg-type]
    try:
        site = SiteRuntime.from_context(context).scaled(config)
    except (DataError, UpdateError) as err:
        return _refuse(msg, node_site_name(context), server_round, err)
    arrays = msg.content.array_records[proto.ARRAYS]
    secure = proto.SECAGG in msg.content.config_records
    run_id = _run_id(config, context)
    try:
        guard = _guard(context, site, config)
        if not secure and guard.policy.require_secure_aggregation:
            raise PolicyError(
                "the server asks for a plain update (a train request without the "
                f"`{proto.SECAGG}` record); this site's policy requires secure aggregation "
                "(require-secure-aggregation = true): it never sends its update unmasked"
            )
        noise = None
        if site.cfg.client_dp:
            done = _rounds_done(guard, run_id)
            noise = client_dp.site_noise(
                site.cfg, config, context.state, guard.policy, server_round, done
            )
        result = train_round(
            site,
            guard,
            arrays,
            server_round,
            run_id,
            context.state,
            evaluate_first=bool(config.get(proto.EVALUATE_INCOMING, False)),
        )
    except (PrivacyError, DataError, UpdateError) as err:
        return _refuse(msg, site.data.name, server_round, err)
    update, metrics = result.update, result.metrics
    if noise is not None:  # client-level DP: clipped and noised before it leaves the site
        clip_range = site.cfg.secagg_clip_range if secure else None
        update = client_dp.privatize(arrays, update, noise, metrics, clip_range)
    mode = proto.Mode(site.cfg.dp, secure, site.cfg.client_dp)
    if secure:  # secure aggregation: only the masked vector
        records = secagg.masked_update(
            msg,
            context,
            arrays,
            update,
            metrics,
            site.cfg.secagg_clip_range,
            weight=1 if noise is not None else None,  # client-level DP: sites count equally
        )
        if noise is not None and proto.SECAGG_CLIPPED in metrics:
            del metrics[proto.SECAGG_CLIPPED]  # a statistic of one site's partly noised update
        reply = _reply(msg, site.data.name, None, metrics, result.evaluation)
        for key, record in records.items():
            reply.content[key] = record
        return _released(reply, mode)
    return _released(_reply(msg, site.data.name, update, metrics, result.evaluation), mode)


def _run_id(config: ConfigRecord, context: Context) -> str:
    """The run the ledger records this message's release under: the server's run id (a
    resumed run keeps its first run's), else Flower's."""
    return str(config.get(proto.RUN_ID, context.run_id))


def _rounds_done(guard: SiteGuard, run_id: str) -> int:
    """The trainings this site did in run ``run_id`` (from its verified ledger)."""
    return sum(1 for e in guard.ledger.entries() if e.run_id == run_id and e.kind == TRAIN)


def _refuse(msg: Message, name: str, server_round: int, err: FedLLMError) -> Message:
    """A refusal reply (kind and reason) the server records; the round goes on without us."""
    kind = refusal_kind(err)
    level = ERROR if kind == "data" else WARNING
    log(level, "%s refuses round %d (%s): %s", name, server_round, kind, err)
    # A data file's problem may quote the offending cells or labels: those stay in the log.
    reason = _QUOTED.sub("'...'", str(err)) if kind == "data" else str(err)
    refusal = ConfigRecord({proto.REFUSAL_KIND: kind, proto.REFUSAL_REASON: reason})
    content = RecordDict(
        {
            proto.METRICS: MetricRecord({proto.NUM_EXAMPLES: 0}),
            proto.SITE: ConfigRecord({proto.SITE_NAME: name}),
            proto.REFUSAL: refusal,
        }
    )
    return _released(Message(content=content, reply_to=msg), proto.STRICTEST)


def _released(reply: Message, mode: proto.Mode) -> Message:
    """``reply`` if everything in it is in the release manifest for its message type and the
    run's mode; otherwise nothing is sent (the handler fails, naming what was not listed)."""
    extra = proto.unlisted(reply.metadata.message_type, reply.content, mode)
    if extra:
        raise PrivacyError(
            f"a {reply.metadata.message_type} reply would carry {', '.join(extra)}, outside the "
            "site's release manifest (fedllm.protocol.MANIFEST): nothing is sent"
        )
    return reply


Handler = Callable[[Message, Context], Message]


def _checked(handler: Handler) -> Handler:
    """A SecAgg+ stage handler whose replies are checked against the release manifest."""

    def checked(msg: Message, context: Context) -> Message:
        return _released(handler(msg, context), proto.STRICTEST)

    return checked


# SecAgg+ stages around the train message: no data is loaded for these.
for _action, _handler in secagg.HANDLERS.items():
    app.train(_action)(_checked(_handler))


def _guard(context: Context, site: SiteRuntime, config: ConfigRecord) -> SiteGuard:
    if site.deployed:
        return SiteGuard.deployed(context)
    root = secagg.sites_root(site.cfg, config)
    return SiteGuard.simulated(root / site.data.name, secagg.site_request(site.cfg))


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """The site's scores of the model sent on its own test rows: in clear without DP; under
    DP noised and charged to its ledger, within its policy's max-evaluations (else refused)."""
    config = msg.content.config_records[proto.CONFIG]
    server_round = int(config.get(proto.SERVER_ROUND, 0))  # type: ignore[arg-type]
    try:
        site = SiteRuntime.from_context(context).scaled(config)
        model = site.model(msg.content.array_records[proto.ARRAYS])
    except (DataError, UpdateError) as err:
        return _refuse(msg, node_site_name(context), server_round, err)
    try:
        guard = _guard(context, site, config)
        metrics = evaluate_round(site, guard, model, server_round, _run_id(config, context))
    except (PrivacyError, DataError, UpdateError) as err:
        return _refuse(msg, site.data.name, server_round, err)
    mode = proto.Mode(site.cfg.dp, False, site.cfg.client_dp)
    return _released(_reply(msg, site.data.name, None, metrics), mode)


@app.query()
def feature_moments(msg: Message, context: Context) -> Message:
    """Federated scaling: this site's per-feature count, sum and sum of squares (train rows),
    only where its policy allows feature statistics (else a refusal)."""
    config = msg.content.config_records.get(proto.CONFIG, ConfigRecord())
    try:
        site = SiteRuntime.from_context(context)
    except (DataError, UpdateError) as err:
        return _refuse(msg, node_site_name(context), 0, err)
    try:
        guard = _guard(context, site, config)
        metrics = release_statistics(site, guard, _run_id(config, context))
    except (PrivacyError, DataError, UpdateError) as err:
        return _refuse(msg, site.data.name, 0, err)
    mode = proto.Mode(site.cfg.dp, False, site.cfg.client_dp)
    return _released(_reply(msg, site.data.name, None, metrics), mode)


def _reply(
    msg: Message,
    name: str,
    arrays: ArrayRecord | None,
    metrics: MetricRecord,
    evaluation: MetricRecord | None = None,
) -> Message:
    content = RecordDict(
        {proto.METRICS: metrics, proto.SITE: ConfigRecord({proto.SITE_NAME: name})}
    )
    if arrays is not None:
        content[proto.ARRAYS] = arrays
    if evaluation is not None:
        content[proto.EVALUATION] = evaluation
    return Message(content=content, reply_to=msg)
