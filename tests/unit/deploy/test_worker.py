"""The executor's workers: one process per (run, FAB digest) serving every task of its run,
tokens handed over a pipe; ``--cold`` forks a fresh one per task."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedllm.deploy.worker import RunWorkers, _tokens

DIGEST = "ab" * 32


def test_tokens_arrive_one_a_line_until_the_executor_closes_the_pipe() -> None:
    read, write = os.pipe()
    os.write(write, b"first\nsecond\nthi")
    os.write(write, b"rd\n")
    os.close(write)
    assert list(_tokens(read, idle_timeout=5.0)) == ["first", "second", "third"]
    os.close(read)


def test_a_worker_without_tasks_ends_after_its_idle_timeout() -> None:
    read, write = os.pipe()
    assert list(_tokens(read, idle_timeout=0.05)) == []
    os.close(read)
    os.close(write)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[RunWorkers]:
    """Workers whose tasks go to a port nothing listens on (their task bodies keep retrying
    to reach it until they are stopped): only who serves which task is looked at."""
    made = RunWorkers("127.0.0.1:9", tmp_path / "trusted-apps.toml", idle_timeout=60.0)
    yield made
    made.close()


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_every_task_of_a_run_goes_to_one_worker_and_runs_never_share_one(
    workers: RunWorkers,
) -> None:
    first = workers.dispatch(1, DIGEST, "token-1", lambda: None)
    assert workers.dispatch(1, DIGEST, "token-2", lambda: None) == first
    other = workers.dispatch(2, DIGEST, "token-3", lambda: None)
    assert other != first
    assert workers.dispatch(1, "cd" * 32, "token-4", lambda: None) not in (first, other)
    pids = workers.pids()
    assert len(pids) == 3 and {first, other} <= set(pids)
    workers.close()
    assert all(_gone(pid) for pid in pids)


def test_a_worker_that_died_is_replaced_on_the_next_task(workers: RunWorkers) -> None:
    first = workers.dispatch(1, DIGEST, "token-1", lambda: None)
    os.kill(first, signal.SIGKILL)
    os.waitpid(first, 0)
    workers.reap()
    again = workers.dispatch(1, DIGEST, "token-2", lambda: None)
    assert again != first and workers.pids() == [again]


def test_cold_forks_a_fresh_process_per_task(tmp_path: Path) -> None:
    cold = RunWorkers("127.0.0.1:9", tmp_path / "trusted-apps.toml", per_task=True)
    try:
        pids = {cold.dispatch(1, DIGEST, f"token-{i}", lambda: None) for i in range(3)}
        assert len(pids) == 3
    finally:
        cold.close()
