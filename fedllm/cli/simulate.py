"""``fedllm simulate``: the researcher's journey, the Flower App on the simulation engine
(virtual sites on Ray), validated before Ray starts, ending with the run's final table."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from fedllm.cli.overrides import add_run_config_option, parse_overrides


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser(
        "simulate", help="run the Flower App on the simulation engine (virtual sites on Ray)"
    )
    add_run_config_option(
        sim,
        "override run-config keys, as `flwr run --run-config`: TOML values, strings "
        "quoted (-c 'task=\"mnist\"' -c target-epsilon=2); repeatable",
    )
    sim.add_argument(
        "--cpus-per-site",
        type=float,
        default=1.0,
        help="CPUs Ray reserves for each virtual site (default 1)",
    )
    sim.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS", ""),
        help="address of an existing Ray cluster (default: start a local one)",
    )
    sim.add_argument("--verbose", action="store_true", help="Flower's debug logging")
    sim.set_defaults(run=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.run_config)  # a malformed -c fails before any import

    from fedllm import simulation
    from fedllm.report import final_table

    cfg = simulation.prepare(overrides)
    # Importing opacus adds a root handler, doubling every flwr line; flwr has its own.
    logging.getLogger("flwr").propagate = False
    print(
        f"fedllm: simulating {cfg.num_sites} sites of `{cfg.task}` for "
        f"{cfg.num_server_rounds} rounds; run folder {simulation.run_folder(cfg)}",
        flush=True,
    )
    run_dir = simulation.run(
        cfg, simulation.SimulationSettings(args.cpus_per_site, args.ray_address, args.verbose)
    )
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        print(f"fedllm: error: the run ended without {metrics_path}", file=sys.stderr)
        return 1
    metrics = json.loads(metrics_path.read_text())
    print()
    print(final_table(metrics))
    print(f"\nrun folder: {run_dir}  (metrics.json, model.pt, plot.png, report.md)")
    return 0
