"""Run the Flower App on Flower's simulation engine (Ray), as ``flwr run`` would.

This drives the same engine entry point Flower's own simulation process uses, so the
ServerApp and ClientApp run unchanged; what it adds is a preflight that validates the run
config and the data before Ray starts, and a run folder the caller knows in advance.
"""

from __future__ import annotations

import importlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedllm.config import RunConfig
from fedllm.rundir import default_run_name
from fedllm.tasks import load_federation

SERVER_APP = "server.server_app:app"
CLIENT_APP = "clients.client_app:app"


@dataclass(frozen=True)
class SimulationSettings:
    """Where virtual sites run: CPUs per site and, optionally, an existing Ray cluster."""

    cpus_per_site: float = 1.0
    ray_address: str = ""
    verbose: bool = False


def app_dir() -> Path:
    """The folder holding the Flower App's pyproject.toml (the repository root)."""
    return Path(__file__).resolve().parent.parent


def default_config(directory: Path | None = None) -> dict[str, Any]:
    from flwr.common.config import get_fused_config_from_dir

    return dict(get_fused_config_from_dir(directory or app_dir(), {}))


def prepare(overrides: dict[str, Any], directory: Path | None = None) -> RunConfig:
    """Fuse overrides with pyproject defaults, validate, load the data: all before Ray."""
    fused = {**default_config(directory), **overrides}
    if not fused.get("run-name"):
        fused["run-name"] = default_run_name(str(fused.get("task", "run")))
    cfg = RunConfig.from_flower(fused)
    if cfg.resume_from:  # the run goes on in its own folder (the ServerApp checks the rest)
        if not (Path(cfg.resume_from) / "checkpoints").is_dir():
            from fedllm.errors import ConfigError

            raise ConfigError(
                f"`resume-from` {cfg.resume_from} is not a run folder with checkpoints"
            )
    elif (Path(cfg.out_dir) / cfg.run_name).exists():
        from fedllm.errors import ConfigError

        raise ConfigError(
            f"run folder {Path(cfg.out_dir) / cfg.run_name} already exists; "
            "choose another `run-name`"
        )
    load_federation(cfg)
    return cfg


def run(cfg: RunConfig, settings: SimulationSettings, directory: Path | None = None) -> Path:
    """Simulate ``cfg.num_sites`` sites; returns the run folder."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    from flwr.app import Context, RecordDict
    from flwr.supercore.run import Run

    engine = importlib.import_module("flwr.simulation.run_simulation")
    directory = directory or app_dir()
    # As `flwr run` would: the user's values, 0 where the task decides (the apps resolve it).
    run_config = cfg.as_given()
    run_id = random.SystemRandom().getrandbits(63)
    flwr_run = Run.create_empty(run_id=run_id)
    flwr_run.override_config = run_config
    flwr_run.primary_task_id = random.SystemRandom().getrandbits(63)
    flwr_run.federation_id = engine.NOOP_FEDERATION_ID
    engine.TaskIdentity.task_id = 1
    engine.TaskIdentity.run_id = run_id
    engine.TaskIdentity.node_id = engine.SUPERLINK_NODE_ID
    init_args: dict[str, Any] = {"address": settings.ray_address} if settings.ray_address else {}
    engine._run_simulation(
        num_supernodes=cfg.num_sites,
        exit_event=engine.EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        server_app_attr=SERVER_APP,
        client_app_attr=CLIENT_APP,
        backend_config={
            "client_resources": {"num_cpus": settings.cpus_per_site, "num_gpus": 0.0},
            "init_args": init_args,
        },
        app_dir=str(directory),
        run=flwr_run,
        server_app_context=Context(
            run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
        ),
        is_app=True,
        verbose_logging=settings.verbose,
    )
    return run_folder(cfg)


def run_folder(cfg: RunConfig) -> Path:
    """Where the run writes: its own new folder, or the folder of the run it resumes."""
    return Path(cfg.resume_from) if cfg.resume_from else Path(cfg.out_dir) / cfg.run_name
