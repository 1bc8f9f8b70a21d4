"""How often a site asks for work: the backed-off poll (and what it costs the SuperLink), the
wake-up pipe between a SuperNode and its executor, and Flower's object retries made quick."""

from __future__ import annotations

import functools
import os
import time
import types

import pytest

from fedllm.deploy.polling import FIRST_RETRY, Backoff, Wakeup, quick_object_retries
from fedllm.errors import ConfigError


def test_the_poll_is_fast_after_a_message_and_flowers_3_s_when_idle() -> None:
    backoff = Backoff()
    assert backoff.wait(0.0) == backoff.wait(0.9) == 0.1  # mid-round: every 0.1 s
    assert backoff.wait(2.0) == pytest.approx(0.2)  # 10 % of the time since the last message
    assert backoff.wait(600.0) == 3.0  # idle: as Flower's own loop


def test_what_the_poll_costs_the_superlink() -> None:
    """100 idle sites: one pull per site every 3 s; a site's 1 s wait between two stages: 10
    pulls; 30 s after its last message a site is back at the idle rate."""
    backoff = Backoff()
    assert 100 / backoff.slowest == pytest.approx(33.3, abs=0.1)
    assert backoff.requests(1.0) == pytest.approx(10.0)
    assert backoff.requests(30.0) == pytest.approx(44.0, abs=0.1)  # (1 + ln 30) / 0.1
    assert backoff.requests(90.0) - backoff.requests(30.0) == pytest.approx(20.0)  # 60 s / 3 s


@pytest.mark.parametrize(
    "values", [(0.0, 1.0, 0.1), (2.0, 1.0, 0.1), (0.1, 1.0, 1.5)], ids=["zero", "above", "growth"]
)
def test_a_poll_schedule_that_makes_no_sense_is_refused(
    values: tuple[float, float, float],
) -> None:
    with pytest.raises(ConfigError, match="poll"):
        Backoff(*values)


def test_a_wakeup_wakes_the_executor_at_once_and_only_once() -> None:
    read, write = os.pipe()
    waiter, notifier = Wakeup(read), Wakeup(write)
    assert not waiter.wait(0.01)  # nothing yet: the timeout
    for _ in range(3):
        notifier.notify()
    started = time.monotonic()
    assert waiter.wait(5.0) and time.monotonic() - started < 0.5
    assert not waiter.wait(0.01)  # the three wake-ups were one
    os.close(write)
    assert not waiter.wait(0.01) and waiter.closed  # the SuperNode is gone: timeouts only
    os.close(read)


def test_a_wakeup_fd_that_is_not_open_is_refused() -> None:
    read, write = os.pipe()
    os.close(read)
    os.close(write)
    with pytest.raises(ConfigError, match=f"file descriptor {read} is not open"):
        Wakeup(read)


def test_flowers_object_pulls_retry_after_10_ms_and_keep_their_other_limits() -> None:
    def pull_objects(
        ids: list[str], initial_backoff: float = 1.0, backoff_cap: float = 10.0
    ) -> float:
        return initial_backoff

    module = types.ModuleType("flower_module")
    module.pull_objects = pull_objects  # type: ignore[attr-defined]
    quick_object_retries(module)
    quick_object_retries(module)  # once is enough: not wrapped twice
    quick = module.pull_objects  # type: ignore[attr-defined]
    assert isinstance(quick, functools.partial) and quick.func is pull_objects
    assert quick([]) == FIRST_RETRY
    assert quick.keywords == {"initial_backoff": FIRST_RETRY, "backoff_cap": 1.0}


def test_flowers_modules_have_the_pulls_fedllm_makes_quick() -> None:
    """The three places a message's objects are pulled in flwr 1.42."""
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    assert callable(start_client_internal.pull_objects)  # the SuperNode, from the SuperLink
    assert callable(run_clientapp.pull_and_inflate_object_from_tree)  # a task, from the SuperNode
    assert callable(http_grid.pull_objects)  # the ServerApp, replies from the SuperLink
