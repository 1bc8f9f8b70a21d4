"""A site: load its own data, train the global model locally with DP-SGD, reply with the
update and its cumulative epsilon; evaluate the global model on its own test rows."""

from __future__ import annotations

from logging import ERROR, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from clients import client_dp, secagg
from clients.site import SiteGuard
from clients.train import SiteRuntime, node_site_name, privacy_request, train_round
from fedllm import protocol as proto
from fedllm.data.tabular import FeatureMoments
from fedllm.errors import DataError, FedLLMError, PrivacyError, UpdateError, refusal_kind
from fedllm.scaling import moments_record
from fedllm.training import evaluate

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train one round, or refuse with the reason (a reply, not an error) when the request is
    outside the site's policy, past its budget, its ledger does not verify, or the site's
    own data file does not fit the task."""
    config = msg.content.config_records[proto.CONFIG]
    server_round = int(config[proto.SERVER_ROUND])  # type: ignore[arg-type]
    try:
        site = SiteRuntime.from_context(context).scaled(config)
    except (DataError, UpdateError) as err:
        return _refuse(msg, node_site_name(context), server_round, err)
    arrays = msg.content.array_records[proto.ARRAYS]
    secure = proto.SECAGG in msg.content.config_records
    try:
        guard = _guard(context, site, config)
        noise = (
            client_dp.site_noise(site.cfg, config, context.state) if site.cfg.client_dp else None
        )
        # The run the ledger records this round under: the server's run id (a resumed run
        # keeps its first run's), else Flower's.
        run_id = str(config.get(proto.RUN_ID, context.run_id))
        update, metrics = train_round(site, guard, arrays, server_round, run_id, context.state)
    except (PrivacyError, DataError, UpdateError) as err:
        return _refuse(msg, site.data.name, server_round, err)
    if noise is not None:  # client-level DP: clipped and noised before it leaves the site
        clip_range = site.cfg.secagg_clip_range if secure else None
        update = client_dp.privatize(arrays, update, noise, metrics, clip_range)
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
        reply = _reply(msg, site.data.name, None, metrics)
        for key, record in records.items():
            reply.content[key] = record
        return reply
    return _reply(msg, site.data.name, update, metrics)


def _refuse(msg: Message, name: str, server_round: int, err: FedLLMError) -> Message:
    """A refusal reply (kind and reason) the server records; the round goes on without us."""
    kind = refusal_kind(err)
    level = ERROR if kind == "data" else WARNING
    log(level, "%s refuses round %d (%s): %s", name, server_round, kind, err)
    refusal = ConfigRecord({proto.REFUSAL_KIND: kind, proto.REFUSAL_REASON: str(err)})
    content = RecordDict(
        {
            proto.METRICS: MetricRecord({proto.NUM_EXAMPLES: 0}),
            proto.SITE: ConfigRecord({proto.SITE_NAME: name}),
            proto.REFUSAL: refusal,
        }
    )
    return Message(content=content, reply_to=msg)


# SecAgg+ stages around the train message: no data is loaded for these.
for _action, _handler in secagg.HANDLERS.items():
    app.train(_action)(_handler)


def _guard(context: Context, site: SiteRuntime, config: ConfigRecord) -> SiteGuard:
    if site.deployed:
        return SiteGuard.deployed(context)
    root = (
        Path(site.cfg.ledger_dir)
        if site.cfg.ledger_dir
        else Path(str(config[proto.RUN_DIR])) / "sites"
    )
    return SiteGuard.simulated(root / site.data.name, privacy_request(site.cfg))


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    config = msg.content.config_records[proto.CONFIG]
    try:
        site = SiteRuntime.from_context(context).scaled(config)
        model = site.model(msg.content.array_records[proto.ARRAYS])
    except (DataError, UpdateError) as err:
        server_round = int(config.get(proto.SERVER_ROUND, 0))  # type: ignore[arg-type]
        return _refuse(msg, node_site_name(context), server_round, err)
    scores = evaluate(site.task, model, site.data.test)
    # AUC needs both classes, which a small site's test rows may lack: keys must agree.
    metrics = MetricRecord(
        {
            proto.LOSS: scores[proto.LOSS],
            proto.ACCURACY: scores[proto.ACCURACY],
            proto.NUM_EXAMPLES: len(site.data.test),
        }
    )
    return _reply(msg, site.data.name, None, metrics)


@app.query()
def feature_moments(msg: Message, context: Context) -> Message:
    """Federated scaling: this site's per-feature count, sum and sum of squares (train rows)."""
    site = SiteRuntime.from_context(context)
    moments = FeatureMoments.of(site.data.train.x.numpy())
    return _reply(msg, site.data.name, None, moments_record(moments))


def _reply(msg: Message, name: str, arrays: ArrayRecord | None, metrics: MetricRecord) -> Message:
    content = RecordDict(
        {proto.METRICS: metrics, proto.SITE: ConfigRecord({proto.SITE_NAME: name})}
    )
    if arrays is not None:
        content[proto.ARRAYS] = arrays
    return Message(content=content, reply_to=msg)
