"""The coordinator: sample sites, send the global model, aggregate, evaluate, record.

``main`` is the story of a run: read the config, load the task and the federation, build the
strategy (``server/strategies/``: FedAvg, FedAdam or FedProx, over SecAgg+ unless
`secagg = false`, with every round recorded by site: ``server/site_records.py``), run Flower's
round loop, and leave the results in the run folder (``server/recorder.py``). With
`resume-from`, the run goes on from its last checkpoint (``server/resume.py``) in its folder,
under the same identity at the sites. Each round: the sampled sites' DP-trained updates are
averaged, the server evaluates the new model on the held-out set (the sites on their own test
rows only where the run and their policies allow: ``fedllm/evaluation.py``), and metrics.json
and a checkpoint are written with each site's cumulative epsilon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.app.typing import MetricRecordValues
from flwr.serverapp import Grid, ServerApp

from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.rundir import create_run_dir
from fedllm.tasks import Split, Task, get_task, load_federation
from fedllm.training import evaluate
from fedllm.weights import load_arrays, to_arrays
from server.grid import polling
from server.recorder import RunRecorder, model_card
from server.resume import Resumed
from server.scaling import run_scaling
from server.strategies import build_strategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Importing opacus adds a root log handler, which would print every flwr line twice.
    logging.getLogger("flwr").propagate = False
    cfg = RunConfig.from_flower(context.run_config)
    task = get_task(cfg.task)
    federation = load_federation(cfg)  # validates the data before any site trains
    model = task.build_model(cfg, federation.input_shape)
    grid = polling(grid)  # replies collected every 0.1 s, not Flower's 3 s
    resumed = Resumed.load(cfg) if cfg.resume_from else None  # refused before any site is asked
    if resumed is None:
        run_dir = create_run_dir(cfg)  # where simulated sites keep their files: before any asks
        scaling = run_scaling(grid, cfg, federation.central_test, run_dir)  # federated: pooled
        card = model_card(cfg, federation, model, scaling.shared)
        run_id, initial = str(context.run_id), to_arrays(model)
        recorder = RunRecorder.create(cfg, card, run_id, run_dir)
        if scaling.released:  # feature statistics, outside DP, where the sites' policies allowed
            recorder.released_statistics(list(scaling.released))
    else:
        scaling = resumed.scaling(cfg, federation.central_test)
        card = model_card(cfg, federation, model, scaling.shared)
        resumed.check_model(card, to_arrays(model))
        run_id, initial = resumed.run_id, resumed.checkpoint.arrays
        recorder = RunRecorder.resume(cfg, card, resumed)
    strategy = build_strategy(cfg, recorder)
    if resumed is not None:
        resumed.restore(strategy)
    # The sites record each round under the run's id (the same after a resume). Virtual sites
    # keep their policy, key and ledger in the run folder (unless `ledger-dir`); a deployed
    # site ignores this and uses its own node-config paths.
    config = ConfigRecord(
        {proto.RUN_ID: run_id, proto.RUN_DIR: str(recorder.run_dir.resolve()), **scaling.shared}
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=cfg.num_server_rounds,
        timeout=cfg.round_timeout,
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
        evaluate_fn=central_evaluation(task, model, scaling.central_test),
        first_round=resumed.first_round if resumed else 1,
    )
    recorder.finish(model, result.arrays)


def central_evaluation(
    task: Task, model: torch.nn.Module, test: Split
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """The server's evaluation of a global model on the held-out set (it only evaluates)."""

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_arrays(model, arrays)
        scores: dict[str, MetricRecordValues] = dict(evaluate(task, model, test))
        return MetricRecord(scores)

    return evaluate_global
