"""Tasks: model + data + train/evaluate, one module per kind."""

from fedllm.tasks.base import Federation, SiteData, Source, Split, Task
from fedllm.tasks.registry import TASKS, get_task, load_federation, task_defaults

__all__ = [
    "TASKS",
    "Federation",
    "SiteData",
    "Source",
    "Split",
    "Task",
    "get_task",
    "load_federation",
    "task_defaults",
]
