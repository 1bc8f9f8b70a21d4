"""The peer's ServerApp: Flower's message-API ``FedAvg`` as the Opacus example runs it, plus
the same central evaluation fedllm's server makes (the same held-out rows, the same metric
code) and a ``metrics.json`` in the run folder that puts the epsilon each site's fresh
engine printed beside the true cumulative one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedllm.config import RunConfig
from fedllm.tasks import get_task, load_federation
from fedllm.training import evaluate

app = ServerApp()
PER_SITE = ("partition-id", "epsilon", "cumulative-epsilon", "noise_multiplier", "train_loss")


def weighted_mean(replies: list[RecordDict], key: str, weight_key: str) -> float:
    pairs = [
        (float(rd["metrics"][weight_key]), float(rd["metrics"][key]))  # type: ignore[arg-type]
        for rd in replies
        if key in rd["metrics"]
    ]
    total = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / total if total else 0.0


def weighted_eval(replies: list[RecordDict], weight_key: str) -> MetricRecord:
    return MetricRecord({k: weighted_mean(replies, k, weight_key) for k in ("accuracy", "loss")})


def per_site_train(replies: list[RecordDict], weight_key: str) -> MetricRecord:
    """Each site's reported values, as lists in partition order (the server keeps them all)."""
    rows = sorted((rd["metrics"] for rd in replies), key=lambda m: float(m["partition-id"]))  # type: ignore[arg-type]
    out: dict[str, Any] = {
        key: [float(m[key]) for m in rows]  # type: ignore[arg-type]
        for key in PER_SITE
        if all(key in m for m in rows)
    }
    out["train_loss_weighted"] = weighted_mean(replies, "train_loss", weight_key)
    return MetricRecord(out)


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.getLogger("flwr").propagate = False  # opacus's root handler doubles flwr's lines
    started = time.monotonic()
    cfg = RunConfig.from_flower(context.run_config)
    task = get_task(cfg.task)
    federation = load_federation(cfg)
    model = task.build_model(cfg, federation.input_shape)  # the same initial weights as fedllm
    test = federation.central_test

    finished: dict[int, float] = {}  # seconds since start when each round was evaluated

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        scores = MetricRecord(dict(evaluate(task, model, test)))
        finished[server_round] = round(time.monotonic() - started, 3)
        return scores

    strategy = FedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_available_nodes=cfg.num_sites,
        train_metrics_aggr_fn=per_site_train,
        evaluate_metrics_aggr_fn=weighted_eval,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.num_server_rounds,
        evaluate_fn=central,
    )
    names = [site.name for site in federation.sites]
    write_metrics(cfg, names, result, finished, time.monotonic() - started)


def write_metrics(
    cfg: RunConfig, names: list[str], result: Any, finished: dict[int, float], elapsed: float
) -> Path:
    """``<out-dir>/<run-name>/metrics.json``, shaped like fedllm's (rounds, final)."""
    rounds = []
    for rnd in sorted(result.train_metrics_clientapp):
        train = dict(result.train_metrics_clientapp[rnd])
        scores = dict(result.evaluate_metrics_serverapp.get(rnd, {}))
        sites = [names[int(i)] for i in train.get("partition-id", [])]
        entry = {"round": rnd, **{k: float(v) for k, v in scores.items()}}
        entry["elapsed-s"] = finished.get(rnd)
        if "cumulative-epsilon" in train:
            entry["epsilon"] = dict(zip(sites, train["cumulative-epsilon"], strict=True))
            entry["printed-epsilon"] = dict(zip(sites, train["epsilon"], strict=True))
            entry["noise-multiplier"] = dict(zip(sites, train["noise_multiplier"], strict=True))
        federated = result.evaluate_metrics_clientapp.get(rnd)
        if federated is not None:
            entry["federated-accuracy"] = float(federated["accuracy"])
        rounds.append(entry)
    last = rounds[-1] if rounds else {}
    final: dict[str, Any] = {
        k: last.get(k) for k in ("accuracy", "loss", "auc", "federated-accuracy")
    }
    final.update(
        {
            "epsilon": max(last["epsilon"].values()) if "epsilon" in last else None,
            "epsilon-per-site": last.get("epsilon"),
            # What each site's fresh PrivacyEngine reported for its last round, as printed.
            "printed-epsilon": (
                max(last["printed-epsilon"].values()) if "printed-epsilon" in last else None
            ),
            "printed-epsilon-per-site": last.get("printed-epsilon"),
            "delta": cfg.target_delta if cfg.dp else None,
            "rounds-completed": len(rounds),
            "elapsed-s": round(elapsed, 2),
        }
    )
    run_dir = Path(cfg.out_dir) / cfg.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"config": cfg.to_flower(), "rounds": rounds, "final": final}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return run_dir
