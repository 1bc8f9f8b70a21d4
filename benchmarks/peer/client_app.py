"""The peer's ClientApp: Flower's Opacus example on fedllm's data and model.

Each train message: load the site's rows (fedllm's partition and preprocessing), load the
global weights into a fresh model, train one round with a fresh ``PrivacyEngine``
(``peer.training``) and print the epsilon that engine reports, as the example does. Beside it
the site keeps, in ``context.state``, the history of its rounds, so the reply also carries the
true cumulative epsilon (the measurement the example does not make) and the server can put
the two side by side.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.clientapp import ClientApp

from fedllm.config import RunConfig
from fedllm.tasks import SiteData, get_task, load_federation
from fedllm.training import evaluate
from peer.training import PeerDP, cumulative_epsilon, noise_for_schedule, train_round

app = ClientApp()
HISTORY = "peer-history"  # context.state: this site's (noise, sample rate, steps) per round


def _site(context: Context) -> tuple[RunConfig, SiteData]:
    cfg = RunConfig.from_flower(context.run_config)
    index = int(context.node_config["partition-id"])  # type: ignore[arg-type]
    return cfg, load_federation(cfg).sites[index]


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, site = _site(context)
    task = get_task(cfg.task)
    model = task.build_model(cfg, tuple(site.train.x.shape[1:]))
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    # fedllm's build_model seeds torch's global generator with the public seed; the example's
    # Net() does not, and Opacus (secure_mode off) draws its noise and Poisson batches from
    # that generator: without a fresh seed every round would repeat the same noise.
    torch.seed()
    n = len(site.train)
    batches = -(-n // cfg.batch_size)  # the DataLoader's length: Poisson rate 1 / batches
    record = context.state.config_records.get(HISTORY)
    rounds: list[float] = list(record["rounds"]) if record else []  # type: ignore[arg-type]
    dp = None
    if cfg.dp:
        # Opacus's calibration for the whole planned run (every round, every local epoch),
        # once per site (the example fixes its noise multiplier in client_fn instead).
        sigma = (
            float(record["noise"])  # type: ignore[arg-type]
            if record
            else noise_for_schedule(
                cfg.target_epsilon,
                cfg.target_delta,
                1.0 / batches,
                batches * cfg.local_epochs * cfg.num_server_rounds,
                cfg.accountant,
            )
        )
        dp = PeerDP(sigma, cfg.max_grad_norm, cfg.target_delta, cfg.accountant)
    result = train_round(
        task, model, site.train, cfg.batch_size, cfg.learning_rate, cfg.local_epochs, dp
    )
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": n,
        "partition-id": int(context.node_config["partition-id"]),  # type: ignore[arg-type]
        "train_loss": result.loss,
    }
    if dp is not None and result.printed_epsilon is not None:
        print(f"Epsilon value for delta={cfg.target_delta} is {result.printed_epsilon:.2f}")
        rounds += [dp.noise_multiplier, result.sample_rate, float(result.steps)]
        context.state[HISTORY] = ConfigRecord({"noise": dp.noise_multiplier, "rounds": rounds})
        history = [(rounds[i], rounds[i + 1], int(rounds[i + 2])) for i in range(0, len(rounds), 3)]
        metrics.update(
            {
                "epsilon": result.printed_epsilon,
                "cumulative-epsilon": cumulative_epsilon(history, dp.delta, dp.accountant),
                "noise_multiplier": dp.noise_multiplier,
            }
        )
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """The example's client-side evaluation: the global model on the site's own test rows."""
    cfg, site = _site(context)
    task = get_task(cfg.task)
    model = task.build_model(cfg, tuple(site.train.x.shape[1:]))
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    scores = evaluate(task, model, site.test)
    metrics = MetricRecord(
        {"loss": scores["loss"], "accuracy": scores["accuracy"], "num-examples": len(site.test)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
