"""The coordinator: sample sites, send the global model, aggregate, evaluate, record.

Every round: FedAvg over the sampled sites' DP-trained updates, federated evaluation at the
sites, central evaluation on the held-out set, and metrics.json rewritten with each site's
cumulative epsilon. At the end: the final model, plot.png and report.md in the run folder.
"""

from __future__ import annotations

import json
import logging
import time
from logging import INFO, WARNING
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedllm import metrics as m
from fedllm import protocol as proto
from fedllm.checkpoint import Checkpointer
from fedllm.config import RunConfig
from fedllm.errors import ConfigError
from fedllm.metrics import RunMetrics, clean
from fedllm.privacy.client_dp import ClientDPAccountant, clip_range_needed, site_noise_std
from fedllm.report import final_table, plot_run, write_report
from fedllm.rundir import create_run_dir
from fedllm.scaling import scale_split, scaler_config
from fedllm.secagg import SecAggSettings
from fedllm.tasks import get_task, load_federation
from fedllm.training import evaluate
from fedllm.weights import exchanged_state, load_arrays, state_bytes, to_arrays
from server.grid import polling
from server.scaling import federated_scaler
from server.secagg import SecAggFedAvg
from server.strategy import NoSiteCanTrain, SiteAwareFedAvg, SiteLevelBudgetSpent

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Importing opacus adds a root log handler, which would print every flwr line twice.
    logging.getLogger("flwr").propagate = False
    cfg = RunConfig.from_flower(context.run_config)
    task = get_task(cfg.task)
    federation = load_federation(cfg)  # validates the data before any site trains
    model = task.build_model(cfg, federation.input_shape)
    run_dir = create_run_dir(cfg)
    log(
        INFO,
        "fedllm: task %s, %d sites, %d rounds, DP %s (target epsilon %s per site), run folder %s",
        cfg.task,
        cfg.num_sites,
        cfg.num_server_rounds,
        "on" if cfg.dp else "OFF",
        cfg.target_epsilon,
        run_dir,
    )

    sampling: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": cfg.min_available_nodes,
        "client_dp": _client_dp(cfg),
    }
    # SecAgg+ (default): the server sees only the sum of the sites' weighted updates.
    strategy = (
        SecAggFedAvg(
            SecAggSettings(cfg.secagg_shares, cfg.secagg_threshold),
            cfg.secagg_clip_range,
            timeout=cfg.round_timeout,
            **sampling,
        )
        if cfg.secagg
        else SiteAwareFedAvg(**sampling)
    )
    log(INFO, "fedllm: secure aggregation %s", "on (SecAgg+)" if cfg.secagg else "OFF")
    log(INFO, "fedllm: local training: %s", cfg.describe_training())
    # Virtual sites keep their policy, key and ledger in the run folder (unless `ledger-dir`);
    # a deployed site ignores this and uses its own node-config paths.
    config = ConfigRecord({proto.RUN_DIR: str(run_dir.resolve())})
    central_test = federation.central_test
    # What a user of the saved model needs to know to feed it inputs.
    model_card: dict[str, object] = {
        "task": cfg.task,
        "input-shape": list(federation.input_shape),
        "hidden-units": cfg.hidden_units,
        "num-classes": federation.num_classes,
        "feature-scaling": cfg.feature_scaling,
        # Per site per round: what an update carries; the whole model, for comparison.
        proto.UPDATE_BYTES: state_bytes(exchanged_state(model)),
        m.MODEL_BYTES: state_bytes(model.state_dict()),
    }
    log(
        INFO,
        "fedllm: each site sends %d bytes per round (full model: %d bytes)",
        model_card[proto.UPDATE_BYTES],
        model_card[m.MODEL_BYTES],
    )
    if cfg.feature_scaling == "federated":
        scaler = federated_scaler(grid, cfg.min_available_nodes)
        central_test = scale_split(central_test, scaler)
        for key, value in scaler_config(scaler).items():
            config[key] = value
            model_card[key] = value
    record = RunMetrics(
        run_dir / "metrics.json", cfg.to_flower(), cfg.target_delta if cfg.dp else None
    )
    record.config_sources = cfg.config_sources()
    record.traffic = {k: int(model_card[k]) for k in (proto.UPDATE_BYTES, m.MODEL_BYTES)}  # type: ignore[call-overload]
    checkpoints = Checkpointer.for_run(
        cfg.checkpoint, cfg.checkpoint_key, run_dir, cfg.to_flower(), model_card
    )
    if checkpoints is not None:
        log(INFO, "fedllm: %s", checkpoints.describe())
    started = time.monotonic()

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_arrays(model, arrays)
        scores = evaluate(task, model, central_test)
        if server_round == 0:
            record.initial = scores
            return MetricRecord(scores)
        entry = _round_entry(server_round, scores, strategy, cfg)
        entry["elapsed-s"] = round(time.monotonic() - started, 3)  # since the first round began
        record.add_round(entry)
        if checkpoints is not None:
            spend: dict[str, object] = {proto.EPSILON: dict(record.epsilon), "delta": record.delta}
            if m.CLIENT_EPSILON in entry:
                spend[m.CLIENT_EPSILON] = entry[m.CLIENT_EPSILON]
                spend[m.CLIENT_DELTA] = cfg.client_delta
            checkpoints.save(server_round, arrays, spend)
        _log_progress(entry, cfg, time.monotonic() - started)
        return MetricRecord(scores)

    try:
        result = strategy.start(
            grid=polling(grid),  # replies collected every 0.2 s, not Flower's 3 s
            initial_arrays=to_arrays(model),
            num_rounds=cfg.num_server_rounds,
            timeout=cfg.round_timeout,
            train_config=config,
            evaluate_config=ConfigRecord(dict(config)),
            evaluate_fn=central_evaluate,
        )
        final = result.arrays
    except (NoSiteCanTrain, SiteLevelBudgetSpent) as stop:
        # Not a failure: the sites' own budgets (or the site-level budget) ended the run.
        # Keep the last global model.
        log(WARNING, "fedllm: stopping early: %s", stop)
        record.stop(stop.server_round, str(stop), stop.refusals)
        final = strategy.current if strategy.current is not None else to_arrays(model)
    load_arrays(model, final)
    torch.save(model.state_dict(), run_dir / "model.pt")
    (run_dir / "model.json").write_text(json.dumps(model_card, indent=2) + "\n")
    summary = record.to_dict()
    plot_run(summary, run_dir / "plot.png")
    write_report(summary, run_dir / "report.md")
    for line in final_table(summary).splitlines():
        log(INFO, "%s", line)
    log(INFO, "fedllm: results in %s", run_dir)


def _client_dp(cfg: RunConfig) -> ClientDPAccountant | None:
    """Site-level DP: the noise calibrated for the planned rounds (every sampled site summed),
    and a refusal when secure aggregation's clip range would cut into the noise."""
    if not cfg.client_dp:
        return None
    dp = ClientDPAccountant.calibrated(
        cfg.client_epsilon, cfg.client_delta, cfg.client_clip, cfg.num_server_rounds, cfg.accountant
    )
    planned = max(int(cfg.num_sites * cfg.fraction_train), 2 if cfg.secagg else 1)
    std = site_noise_std(dp.noise_multiplier, cfg.client_clip, planned)
    needed = clip_range_needed(cfg.client_clip, std)
    if cfg.secagg and cfg.secagg_clip_range < needed:
        raise ConfigError(
            f"`secagg-clip-range` ({cfg.secagg_clip_range}) does not cover a site's clipped, "
            f"noised update (client-clip {cfg.client_clip} + 8 x noise std {std:.4g} with "
            f"{planned} sampled sites): set it to at least {needed:.4g}"
        )
    log(
        INFO,
        "fedllm: client-level DP on: target epsilon %s at delta %g per site over %d rounds, "
        "clip %s, noise multiplier %.4f (%s accountant; each of %d sampled sites adds std %.4g)",
        cfg.client_epsilon,
        cfg.client_delta,
        cfg.num_server_rounds,
        cfg.client_clip,
        dp.noise_multiplier,
        cfg.accountant,
        planned,
        std,
    )
    return dp


def _round_entry(
    server_round: int, scores: dict[str, float], strategy: SiteAwareFedAvg, cfg: RunConfig
) -> dict[str, object]:
    sites = strategy.site_train.get(server_round, {})
    evals = strategy.site_eval.get(server_round, {})
    entry: dict[str, object] = {"round": server_round, **{k: clean(v) for k, v in scores.items()}}
    if evals:
        total = sum(e[proto.NUM_EXAMPLES] for e in evals.values())
        entry["federated-accuracy"] = (
            sum(e[proto.ACCURACY] * e[proto.NUM_EXAMPLES] for e in evals.values()) / total
        )
    entry[proto.EPSILON] = {
        s: (clean(v[proto.EPSILON]) if cfg.dp else None) for s, v in sites.items()
    }
    entry["sites"] = {s: {k: clean(float(x)) for k, x in v.items()} for s, v in sites.items()}
    entry["refused"] = strategy.refusals(server_round)
    entry["rejected"] = strategy.rejections(server_round)
    if cfg.client_dp:  # site-level: cumulative over the released sums, realized noise
        dp = strategy.client_dp
        entry.update(
            strategy.client_rounds.get(server_round)
            or {m.CLIENT_EPSILON: dp.epsilon if dp else None, m.CLIENT_NOISE_MULTIPLIER: None}
        )
    if strategy.site_dropped.get(server_round):
        entry["dropped"] = strategy.site_dropped[server_round]
    return entry


def _log_progress(entry: dict[str, object], cfg: RunConfig, elapsed: float) -> None:
    eps = cast(dict[str, float | None], entry[proto.EPSILON])
    spent = ", ".join(f"{s} {v:.3f}" for s, v in sorted(eps.items()) if v is not None)
    refused = cast(dict[str, dict[str, str]], entry.get("refused", {}))
    if refused:
        spent += " | refused: " + ", ".join(f"{s} ({r['kind']})" for s, r in refused.items())
    shown = spent if cfg.dp else "n/a (DP off)"
    if cfg.client_dp and entry.get(m.CLIENT_EPSILON) is not None:
        shown += f" | site-level epsilon {entry[m.CLIENT_EPSILON]:.3f}"
    log(
        INFO,
        "fedllm round %d/%d (%.0fs): accuracy %.4f, auc %s | epsilon %s",
        entry["round"],
        cfg.num_server_rounds,
        elapsed,
        entry["accuracy"],
        f"{entry['auc']:.4f}" if entry.get("auc") is not None else "-",
        shown,
    )
