"""The run folder: created fresh for each run, never reusing or touching an earlier one."""

from __future__ import annotations

import time
from pathlib import Path

from fedllm.config import RunConfig
from fedllm.errors import ConfigError


def default_run_name(task: str) -> str:
    return f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run_dir(cfg: RunConfig) -> Path:
    """``out-dir/run-name``; an explicit name that exists is refused, a generated one gets a
    numeric suffix."""
    root = Path(cfg.out_dir)
    name = cfg.run_name or default_run_name(cfg.task)
    path = root / name
    if path.exists():
        if cfg.run_name:
            raise ConfigError(f"run folder {path} already exists; choose another `run-name`")
        suffix = 1
        while (root / f"{name}-{suffix}").exists():
            suffix += 1
        path = root / f"{name}-{suffix}"
    path.mkdir(parents=True, exist_ok=False)
    return path
