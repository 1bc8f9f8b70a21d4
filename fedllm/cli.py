"""The ``fedllm`` command line: the common journeys of a researcher, an operator, a site."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from fedllm.errors import FedLLMError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedllm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser(
        "simulate", help="run the Flower App on the simulation engine (virtual sites on Ray)"
    )
    sim.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override run-config keys, as `flwr run --run-config`: TOML values, strings "
        'quoted (-c task="mnist" -c target-epsilon=2); repeatable',
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
    args = parser.parse_args(argv)
    try:
        if args.command == "simulate":
            return _simulate(args)
    except FedLLMError as err:
        print(f"fedllm: error: {err}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse rejects unknown commands


def _simulate(args: argparse.Namespace) -> int:
    from flwr.common.config import parse_config_args

    from fedllm import simulation
    from fedllm.report import final_table

    overrides = parse_config_args([" ".join(args.run_config)]) if args.run_config else {}
    cfg = simulation.prepare(overrides)
    # Importing opacus adds a root handler, doubling every flwr line; flwr has its own.
    logging.getLogger("flwr").propagate = False
    print(
        f"fedllm: simulating {cfg.num_sites} sites of `{cfg.task}` for "
        f"{cfg.num_server_rounds} rounds; run folder {cfg.out_dir}/{cfg.run_name}",
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
