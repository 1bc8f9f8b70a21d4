"""fedllm's SuperNode entry point: Flower's own flags passed through, fedllm's options taken
out, only process isolation (fedllm's executor) served, and Flower's loop internals present in
the installed Flower."""

from __future__ import annotations

import inspect
import time
from typing import Any

import pytest

from fedllm.deploy import supernode
from fedllm.deploy.polling import Backoff


def test_fedllms_options_are_taken_out_and_flowers_flags_passed_through() -> None:
    args, flower = supernode.parse(
        ["--wakeup-fd", "7", "--superlink", "h:8000", "--poll-fastest", "0.02", "--isolation",
         "process", "--node-config", 'a="b"'],
    )  # fmt: skip
    assert args.wakeup_fd == 7 and args.poll_fastest == 0.02 and args.poll_slowest == 3.0
    assert flower == ["--superlink", "h:8000", "--isolation", "process", "--node-config", 'a="b"']


@pytest.mark.parametrize("isolation", [[], ["--isolation", "subprocess"]], ids=["default", "sub"])
def test_only_process_isolation_is_served(isolation: list[str]) -> None:
    """Flower's default (subprocess) starts flower-superexec, which runs any app."""
    with pytest.raises(SystemExit, match="only through fedllm's executor"):
        supernode.main(["--superlink", "h:8000", "--insecure", *isolation])


def test_the_installed_flower_has_the_loop_this_one_replaces() -> None:
    """The internals the loop calls, and the 3 s sleep after an empty pull it replaces."""
    from flwr.supernode import start_client_internal as flower

    supernode.check_flower()
    source = inspect.getsource(flower.start_client_internal)
    assert "time.sleep(3)" in source and "_pull_and_store_message(" in source
    assert "_push_messages(" in source
    assert "time.sleep(0.5)" in inspect.getsource(flower._push_messages)


def test_short_waits_cut_flowers_local_waits_only() -> None:
    waits = supernode.ShortWaits(0.005)
    started = time.monotonic()
    waits.sleep(0.5)
    assert time.monotonic() - started < 0.25
    assert waits.monotonic is time.monotonic  # the rest of `time` is unchanged


class SuperLinkQueue:
    """The SuperLink's side of the Fleet connection, in memory: a message becomes available
    at a chosen moment; the time of the pull that got it is kept. The message's run is not
    running, so Flower's message handling drops it after the pull: only the pull is timed."""

    def __init__(self) -> None:
        from flwr.app import Message, RecordDict
        from flwr.supercore.inflatable.inflatable_object import get_object_tree

        from tests.messages import instruction

        self.message: Message = instruction(7, RecordDict(), "query")
        self.tree = get_object_tree(self.message)
        self.available_at: float | None = None
        self.pulled_at: float | None = None
        self.pulls = 0

    def receive(self) -> Any:
        self.pulls += 1
        now = time.monotonic()
        if self.available_at is None or now < self.available_at or self.pulled_at is not None:
            return None
        self.pulled_at = now
        return self.message, self.tree

    def conn(self) -> tuple[Any, ...]:
        from flwr.supercore.run import RunNotRunningException

        def get_run(run_id: int) -> Any:
            raise RunNotRunningException(run_id)

        def unused(*args: Any) -> Any:
            raise AssertionError("not reached")

        return (7, self.receive, unused, get_run, unused, unused, unused, unused)


@pytest.mark.parametrize("idle", [0.3, 1.0, 2.5])
def test_a_message_is_picked_up_within_tens_of_milliseconds_of_being_available(
    idle: float,
) -> None:
    """The loop itself, Flower's state and message handling: a message available ``idle``
    seconds after the last one is pulled within max(0.1 s, 10 % of idle), not after Flower's
    3 s sleep."""
    import threading

    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate import NodeStateFactory

    factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
    link, stop = SuperLinkQueue(), threading.Event()
    loop = threading.Thread(
        target=supernode.pull_loop,
        args=(link.conn(), factory.state(), factory.objectstore_factory.store(), {}, None),
        kwargs={"backoff": Backoff(), "wakeup": None, "stop": stop.is_set},
    )
    loop.start()
    try:
        link.available_at = time.monotonic() + idle
        deadline = link.available_at + 5.0
        while link.pulled_at is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        stop.set()
        loop.join(timeout=10)
    assert link.pulled_at is not None
    delay = link.pulled_at - link.available_at
    assert delay < Backoff().wait(idle) + 0.1, delay  # scheduling slack on a busy machine


def test_the_loop_counts_each_kind_of_request_and_the_distinct_objects() -> None:
    """What the SuperNode logs per message: requests of each kind, their time, and objects
    asked for again (a pull retried while its sender still uploads it)."""
    tally = supernode.Tally()
    pull = tally.wrap("pull-object", lambda run_id, object_id: b"x")
    push = tally.wrap("push-object", lambda run_id, session, object_id, content: None)
    for object_id in ("a", "b", "a"):
        pull(7, object_id)
    push(7, "s", "c", b"y")
    summary = tally.summary()
    assert "pull-object 3x" in summary and "(2 objects)" in summary
    assert "push-object 1x" in summary and "(1 objects)" in summary
    tally.reset()
    assert tally.summary() == ""


def test_a_pull_refused_with_401_asks_for_activation_again() -> None:
    """A SuperLink restarted with its state in memory no longer knows the node: the loop
    leaves Flower's connection so that the node activates again, instead of stopping."""
    import httpx
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate import NodeStateFactory

    def refused() -> Any:
        request = httpx.Request("POST", "https://superlink/v1/fleet/pull-messages")
        raise httpx.HTTPStatusError("401", request=request, response=httpx.Response(401))

    conn = list(SuperLinkQueue().conn())
    conn[1] = refused
    factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
    state, store = factory.state(), factory.objectstore_factory.store()
    with pytest.raises(supernode.NodeUnknown, match="401"):
        supernode.pull_loop(conn, state, store, {}, None, Backoff(), None)


def test_flowers_own_interrupt_on_401_becomes_a_flag_and_other_signals_pass() -> None:
    import os
    import signal
    import threading

    unknown = threading.Event()
    shim = supernode.OwnInterrupt(unknown)
    shim.kill(os.getpid(), signal.SIGINT)  # what Flower's heartbeat and retries do on 401
    assert unknown.is_set()
    shim.kill(os.getpid(), 0)  # a real os.kill: signal 0 only checks the process exists
    assert shim.getpid() == os.getpid()
    with pytest.raises(supernode.NodeUnknown, match="refused"):
        supernode.pull_loop(SuperLinkQueue().conn(), None, None, {}, None, Backoff(), None,
                            unknown=unknown)  # fmt: skip


def test_flower_interrupts_itself_on_401_where_the_loop_expects_it() -> None:
    import importlib

    for name in supernode.INTERRUPTS_ON_401:
        source = inspect.getsource(importlib.import_module(name))
        assert "os.kill(os.getpid(), signal.SIGINT)" in source, name
