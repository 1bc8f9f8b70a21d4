"""Run the peer on Flower's simulation engine, as ``fedllm simulate`` runs fedllm: one virtual
SuperNode per site, the same run-config keys and the same preflight (config and data checked,
a run folder that does not exist yet), then ``<out-dir>/<run-name>/metrics.json``.

    .venv/bin/python benchmarks/peer/simulate.py -c 'task="heart-disease"' \\
        -c 'data-path="../shared/data/heart_disease"' -c 'partitioner="natural"' -c run-name=...

Keys the peer has no use for (secure aggregation, strategies, ledgers, checkpoints) are
accepted and ignored: the peer is plain Flower.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1]
if str(BENCHMARKS) not in sys.path:  # `peer` is imported from benchmarks/, here and in Ray
    sys.path.insert(0, str(BENCHMARKS))

SERVER_APP = "peer.server_app:app"
CLIENT_APP = "peer.client_app:app"


def run(overrides: dict[str, Any], cpus_per_site: float = 1.0, ray_address: str = "") -> Path:
    """Simulate the peer for the run config ``overrides``; returns the run folder."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    from flwr.app import Context, RecordDict
    from flwr.supercore.run import Run

    from fedllm import simulation

    cfg = simulation.prepare(overrides)  # the same checks as `fedllm simulate`
    run_config = cfg.as_given()
    engine = importlib.import_module("flwr.simulation.run_simulation")
    run_id = random.SystemRandom().getrandbits(63)
    flwr_run = Run.create_empty(run_id=run_id)
    flwr_run.override_config = run_config
    flwr_run.primary_task_id = random.SystemRandom().getrandbits(63)
    flwr_run.federation_id = engine.NOOP_FEDERATION_ID
    engine.TaskIdentity.task_id = 1
    engine.TaskIdentity.run_id = run_id
    engine.TaskIdentity.node_id = engine.SUPERLINK_NODE_ID
    init_args: dict[str, Any] = {"address": ray_address} if ray_address else {}
    engine._run_simulation(
        num_supernodes=cfg.num_sites,
        exit_event=engine.EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        server_app_attr=SERVER_APP,
        client_app_attr=CLIENT_APP,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_site, "num_gpus": 0.0},
            "init_args": init_args,
        },
        app_dir=str(simulation.app_dir()),  # pyproject's run-config defaults, as fedllm's
        run=flwr_run,
        server_app_context=Context(
            run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
        ),
        is_app=True,
        verbose_logging=False,
    )
    return Path(cfg.out_dir) / cfg.run_name


def main(argv: list[str] | None = None) -> int:
    from fedllm.cli.overrides import add_run_config_option, parse_overrides
    from fedllm.errors import FedLLMError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_config_option(parser, "run-config override, as for `fedllm simulate`; repeatable")
    parser.add_argument("--cpus-per-site", type=float, default=1.0)
    parser.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS", ""))
    args = parser.parse_args(argv)
    try:
        run_dir = run(parse_overrides(args.run_config), args.cpus_per_site, args.ray_address)
    except FedLLMError as err:
        print(f"peer: error: {err}", file=sys.stderr)
        return 2
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        print(f"peer: error: the run ended without {metrics_path}", file=sys.stderr)
        return 1
    final = json.loads(metrics_path.read_text())["final"]
    print(f"peer: final {json.dumps(final)}\nrun folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
