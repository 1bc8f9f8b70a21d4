"""A site: load its own data, train the global model locally with DP-SGD, reply with the
update and its cumulative epsilon; evaluate the global model on its own test rows."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.train import SiteRuntime, train_round
from fedllm import metrics as m
from fedllm.data.tabular import FeatureMoments
from fedllm.scaling import moments_record
from fedllm.training import evaluate

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content.config_records[m.CONFIG]
    site = SiteRuntime.from_context(context).scaled(config)
    arrays = msg.content.array_records[m.ARRAYS]
    server_round = int(config[m.SERVER_ROUND])  # type: ignore[arg-type]
    update, metrics = train_round(site, arrays, server_round, context.state)
    return _reply(msg, site.data.name, update, metrics)


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
