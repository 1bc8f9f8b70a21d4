"""fedllm's SuperNode entry point: Flower's own flags passed through, fedllm's options taken
out, only process isolation (fedllm's executor) served, and Flower's loop internals present in
the installed Flower."""

from __future__ import annotations

import inspect
import time

import pytest

from fedllm.deploy import supernode


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
