"""Tasks by name, as chosen by the run config's `task` key."""

from __future__ import annotations

import functools

from fedllm.config import RunConfig, TrainingDefaults
from fedllm.errors import ConfigError
from fedllm.tasks.base import Federation, Task
from fedllm.tasks.tabular import BreastCancer, Csv, HeartDisease
from fedllm.tasks.text import TextLM
from fedllm.tasks.vision import Mnist

TASKS: dict[str, type[Task]] = {t.name: t for t in (BreastCancer, HeartDisease, Mnist, Csv, TextLM)}


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name lists the known ones."""
    return _task_class(name)()


def task_defaults(name: str) -> TrainingDefaults:
    """The local-training defaults task ``name`` declares (RunConfig resolves with them)."""
    return _task_class(name).defaults


def _task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(f"unknown `task` {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


@functools.lru_cache(maxsize=4)
def load_federation(cfg: RunConfig) -> Federation:
    """The federation ``cfg`` describes, built once per process (sites re-read it each round)."""
    return get_task(cfg.task).federation(cfg)
