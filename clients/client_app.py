"""A site: load its own data, train the global model locally with DP-SGD, reply with the
update and its cumulative epsilon; evaluate the global model on its own test rows."""

from __future__ import annotations

from logging import WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from clients import secagg
from clients.site import SiteGuard
from clients.train import SiteRuntime, privacy_request, train_round
from fedllm import metrics as m
from fedllm.data.tabular import FeatureMoments
from fedllm.errors import PrivacyError, refusal_kind
from fedllm.scaling import moments_record
from fedllm.training import evaluate

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train one round, or refuse with the reason (a reply, not an error) when the request is
    outside the site's policy, past its budget, or its ledger does not verify."""
    config = msg.content.config_records[m.CONFIG]
    site = SiteRuntime.from_context(context).scaled(config)
    arrays = msg.content.array_records[m.ARRAYS]
    server_round = int(config[m.SERVER_ROUND])  # type: ignore[arg-type]
    try:
        guard = _guard(context, site, config)
        update, metrics = train_round(
            site, guard, arrays, server_round, str(context.run_id), context.state
        )
    except PrivacyError as err:
        kind = refusal_kind(err)
        log(WARNING, "%s refuses round %d (%s): %s", site.data.name, server_round, kind, err)
        refusal = ConfigRecord({m.REFUSAL_KIND: kind, m.REFUSAL_REASON: str(err)})
        content = RecordDict(
            {
                m.METRICS: MetricRecord({m.NUM_EXAMPLES: 0}),
                m.SITE: ConfigRecord({m.SITE_NAME: site.data.name}),
                m.REFUSAL: refusal,
            }
        )
        return Message(content=content, reply_to=msg)
    if m.SECAGG in msg.content.config_records:  # secure aggregation: only the masked vector
        masked = secagg.masked_update(
            msg, context, arrays, update, metrics, site.cfg.secagg_clip_range
        )
        reply = _reply(msg, site.data.name, None, metrics)
        reply.content[m.SECAGG_MASKED] = masked
        return reply
    return _reply(msg, site.data.name, update, metrics)


# SecAgg+ stages around the train message: no data is loaded for these.
app.train("secagg_setup")(secagg.setup)
app.train("secagg_share_keys")(secagg.share_keys)
app.train("secagg_unmask")(secagg.unmask)


def _guard(context: Context, site: SiteRuntime, config: ConfigRecord) -> SiteGuard:
    if site.deployed:
        return SiteGuard.deployed(context)
    root = (
        Path(site.cfg.ledger_dir) if site.cfg.ledger_dir else Path(str(config[m.RUN_DIR])) / "sites"
    )
    return SiteGuard.simulated(root / site.data.name, privacy_request(site.cfg))


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    site = SiteRuntime.from_context(context).scaled(msg.content.config_records[m.CONFIG])
    model = site.model(msg.content.array_records[m.ARRAYS])
    scores = evaluate(site.task, model, site.data.test)
    # AUC needs both classes, which a small site's test rows may lack: keys must agree.
    metrics = MetricRecord(
        {
            m.LOSS: scores[m.LOSS],
            m.ACCURACY: scores[m.ACCURACY],
            m.NUM_EXAMPLES: len(site.data.test),
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
    content = RecordDict({m.METRICS: metrics, m.SITE: ConfigRecord({m.SITE_NAME: name})})
    if arrays is not None:
        content[m.ARRAYS] = arrays
    return Message(content=content, reply_to=msg)
