"""Flower's SuperNode with a prompt pull loop: ``python -m fedllm.deploy.supernode``.

Everything but the loop is ``flower-supernode`` itself: the same command line (every flag is
Flower's, parsed by Flower), the same TLS connection to the SuperLink with the same node-key
signatures and heartbeats, the same Runtime API for the executor behind the same SuperExec
secret, the same message handling (Flower's ``_pull_and_store_message`` and
``_push_messages``). What differs is when it asks: Flower 1.42 sleeps a hard-coded 3 s after
every empty pull, this loop waits as :class:`~fedllm.deploy.polling.Backoff` says (0.1 s in
the middle of a round, growing to Flower's 3 s when idle), waits for the ClientApp's reply
in 5 ms steps instead of Flower's 0.5 s, and asks again for a message's object not uploaded
yet after 10 ms instead of 1 s (:func:`~fedllm.deploy.polling.quick_object_retries`). When
it has stored a task it wakes the executor through an inherited pipe (``--wakeup-fd``), so
the task starts at once.

Only ``--isolation process`` is served: ClientApps run in fedllm's executor, which runs only
the apps the site pinned (:mod:`fedllm.deploy.executor`); Flower's own ``subprocess`` mode
would start ``flower-superexec``, which runs any app.

Run: ``python -m fedllm.deploy.supernode [fedllm options] FLOWER-SUPERNODE-FLAGS``, fedllm's
options being ``--wakeup-fd N`` and ``--poll-fastest/--poll-slowest/--poll-growth``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from logging import INFO, WARNING
from typing import Any

from fedllm.deploy.polling import Backoff, Wakeup, quick_object_retries

FLOWER = "1.42."  # the Flower release whose SuperNode internals this loop calls
REPLY_POLL = 0.005  # seconds between checks for the ClientApp's reply (Flower: 0.5)
ACTIVATION_RETRY = 5.0  # seconds between activation attempts while the SuperLink refuses
ACTIVATION_REFUSED = "Failed to activate SuperNode"  # Flower's message for API error 2004
EXIT = "flwr_exit"  # the name Flower's Fleet connection module calls to exit
ISOLATION_ONLY = (
    "fedllm.deploy.supernode runs ClientApps only through fedllm's executor, which runs only "
    "the apps the site pinned: pass `--isolation process`"
)


def prompt_loop(backoff: Backoff, wakeup: Wakeup | None) -> Callable[..., None]:
    """A stand-in for Flower's ``start_client_internal`` (same keywords) whose pull loop
    waits as ``backoff`` says and wakes the executor through ``wakeup``."""

    def start_client_internal(
        *,
        state_factory: Any,
        server_address: str,
        node_config: Any,
        root_certificates: bytes | str | None = None,
        insecure: bool | None = None,
        authentication_keys: Any = None,
        max_retries: int | None = None,
        max_wait_time: float | None = None,
        isolation: str = "",
        health_server_address: str | None = None,
        trusted_entities: dict[str, str] | None = None,
        **_runtime: Any,  # the Runtime API's settings: used by flower_supernode's server
    ) -> None:
        from flwr.common.constant import ISOLATION_MODE_PROCESS
        from flwr.supercore import log
        from flwr.supercore.exit import ExitCode, flwr_exit, register_signal_handlers
        from flwr.supercore.grpc_health import run_health_server_grpc_no_tls
        from flwr.supercore.telemetry import EventType
        from flwr.supernode import start_client_internal as flower

        if insecure is None:
            insecure = root_certificates is None
        if insecure and authentication_keys is not None:  # as Flower refuses it
            flwr_exit(
                ExitCode.SUPERNODE_STARTED_WITHOUT_TLS_BUT_NODE_AUTH_ENABLED,
                "SuperNode authentication requires a TLS connection to the SuperLink "
                "(`--root-certificates`).",
            )
        if isolation != ISOLATION_MODE_PROCESS:  # main() refuses it first
            raise SystemExit(ISOLATION_ONLY)
        servers = []
        if health_server_address is not None:
            servers.append(run_health_server_grpc_no_tls(health_server_address))
        register_signal_handlers(
            event_type=EventType.RUN_SUPERNODE_LEAVE,
            exit_message="SuperNode terminated gracefully.",
            grpc_servers=servers,
        )
        state = state_factory.state()
        store = state_factory.objectstore_factory.store()
        # Flower's _push_messages waits for the reply (in this process's state) in 0.5 s steps.
        flower.time = ShortWaits(REPLY_POLL)  # type: ignore[attr-defined,assignment]
        quick_object_retries(flower)  # a message's objects may still be on their way
        forgotten = unknown_node_flag()
        while True:
            forgotten.clear()
            with activated_connection(  # Flower's connection, asked again while not activated
                server_address=server_address,
                insecure=insecure,
                root_certificates=root_certificates,
                authentication_keys=authentication_keys,
                max_retries=max_retries,
                max_wait_time=max_wait_time,
            ) as conn:
                state.set_node_id(conn[0])
                log(INFO, "SuperNode ID: %s", conn[0])
                log(
                    INFO,
                    "fedllm: pulling every %.3f s after a message, up to every %.1f s when idle%s",
                    backoff.fastest,
                    backoff.slowest,
                    "; tasks wake the executor" if wakeup else "",
                )
                try:
                    pull_loop(
                        conn, state, store, node_config, trusted_entities, backoff, wakeup,
                        unknown=forgotten,
                    )  # fmt: skip
                    return
                except NodeUnknown as err:  # caught here: Flower's connection would swallow it
                    log(
                        WARNING,
                        "fedllm: the SuperLink no longer knows SuperNode %s (%s; restarted "
                        "with its state in memory?): activating this node again",
                        conn[0],
                        err,
                    )

    return start_client_internal


class NodeUnknown(Exception):
    """The SuperLink answered 401 to this node's signed request: it no longer knows the node
    (a SuperLink restarted with its state in memory gives every node a new id)."""


class OwnInterrupt:
    """The ``os`` module as a Flower module sees it, but for one call: Flower's Fleet
    connection interrupts its own process (``os.kill(os.getpid(), SIGINT)``) when the SuperLink
    answers 401, from its heartbeat thread and from its retrying requests, which stops the
    SuperNode; that call sets ``unknown`` instead, and the pull loop activates the node again.
    Every other signal, and every other ``os`` call, is the real one."""

    def __init__(self, unknown: threading.Event) -> None:
        self.unknown = unknown

    def kill(self, pid: int, sig: int) -> None:
        import os
        import signal

        if pid == os.getpid() and sig == signal.SIGINT:
            self.unknown.set()
            return
        os.kill(pid, sig)

    def __getattr__(self, name: str) -> Any:
        import os

        return getattr(os, name)


# Where Flower's SuperNode interrupts itself on a 401 (its heartbeat, its retrying requests).
INTERRUPTS_ON_401 = ("flwr.supernode.fleet_http_connection", "flwr.supercore.retry.http_retry")


def unknown_node_flag() -> threading.Event:
    """Installs :class:`OwnInterrupt` in the modules of :data:`INTERRUPTS_ON_401`; its event."""
    unknown = threading.Event()
    for name in INTERRUPTS_ON_401:
        importlib.import_module(name).os = OwnInterrupt(unknown)  # type: ignore[attr-defined]
    return unknown


class NotActivated(Exception):
    """The SuperLink refused to activate this node (Flower would exit with code 305)."""


@contextlib.contextmanager
def activated_connection(
    patience: float | None = None, retry: float = ACTIVATION_RETRY, **connection: Any
) -> Iterator[Sequence[Any]]:
    """Flower's ``_init_connection(**connection)``, opened again every ``retry`` seconds for
    up to ``patience`` seconds (default: until a previous node with this key is offline) while
    the SuperLink refuses to activate the node; then Flower's own exit (code 305).

    A SuperNode killed without a goodbye stays online at the SuperLink until its heartbeats
    lapse (Flower: twice the 30 s heartbeat interval after the last one), and Flower's
    SuperLink refuses to activate a node that is online: a site restarted within that minute
    would exit instead of rejoining. The same refusal answers a key that is not registered,
    so such a node now gives up after ``patience`` instead of at once."""
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE
    from flwr.supercore import log
    from flwr.supercore.exit import ExitCode
    from flwr.supernode import fleet_http_connection as http
    from flwr.supernode import start_client_internal as flower

    if patience is None:
        patience = (HEARTBEAT_PATIENCE + 1) * HEARTBEAT_DEFAULT_INTERVAL
    real_exit = getattr(http, EXIT)  # Flower's flwr_exit, as the connection calls it

    def refusal_raises(code: int, message: str | None = None, *args: Any, **kw: Any) -> Any:
        if code == ExitCode.SUPERNODE_CONNECTION_ERROR and ACTIVATION_REFUSED in (message or ""):
            raise NotActivated(message)
        return real_exit(code, message, *args, **kw)

    deadline = time.monotonic() + patience
    while True:
        with contextlib.ExitStack() as stack:
            setattr(http, EXIT, refusal_raises)
            try:
                conn = stack.enter_context(flower._init_connection(**connection))
            except NotActivated as refused:
                if time.monotonic() + retry > deadline:
                    real_exit(
                        ExitCode.SUPERNODE_CONNECTION_ERROR,
                        f"{refused} (asked for {patience:.0f} s: is this node's key registered?)",
                    )
                log(
                    WARNING,
                    "fedllm: the SuperLink does not activate this node yet (a SuperNode with "
                    "this key that was killed stays online until its heartbeats lapse, up to "
                    "%.0f s; or the key is not registered): asking again in %.0f s",
                    HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL,
                    retry,
                )
                time.sleep(retry)
                continue
            finally:
                setattr(http, EXIT, real_exit)
            yield conn
            return


def pull_loop(
    conn: Sequence[Any],
    state: Any,
    store: Any,
    node_config: Any,
    trusted_entities: dict[str, str] | None,
    backoff: Backoff,
    wakeup: Wakeup | None,
    stop: Callable[[], bool] = lambda: False,
    unknown: threading.Event | None = None,
) -> None:
    """Flower's pull-and-push over ``conn`` (what Flower's ``_init_connection`` yields), with a
    wait of ``backoff.wait(time since the last message)`` after an empty pull; the executor
    woken as soon as a task is stored. Runs until ``stop()`` (never, in a SuperNode); raises
    :class:`NodeUnknown` when the SuperLink answers a pull with 401, or ``unknown`` is set
    (one of Flower's requests got 401)."""
    import httpx
    from flwr.supercore import log
    from flwr.supernode import start_client_internal as flower

    tally = Tally()
    _, receive, send, get_run, get_fab, pull_object, push_object, confirm = (
        conn[0],
        *(tally.wrap(name, call) for name, call in zip(CALLS, conn[1:], strict=True)),
    )
    last = time.monotonic()
    while not stop():
        if unknown is not None and unknown.is_set():
            raise NodeUnknown("a request was refused (401)")
        asked = time.monotonic()
        try:
            run_id = flower._pull_and_store_message(
                state=state,
                object_store=store,
                node_config=node_config,
                receive=receive,
                get_run=get_run,
                get_fab=get_fab,
                pull_object=pull_object,
                confirm_message_received=confirm,
                trusted_entities=trusted_entities,
            )
        except httpx.HTTPStatusError as err:
            if err.response.status_code == httpx.codes.UNAUTHORIZED:
                raise NodeUnknown(f"a pull was refused ({err.response.status_code})") from err
            raise
        if run_id is None:
            tally.reset()
            time.sleep(backoff.wait(time.monotonic() - last))
            continue
        stored = time.monotonic()
        if wakeup is not None:
            wakeup.notify()
        flower._push_messages(state=state, object_store=store, send=send, push_object=push_object)
        done = time.monotonic()
        log(
            INFO,
            "fedllm: run %s: a message %.3f s after the last reply, pulled and stored in "
            "%.3f s, answered and sent in %.3f s (requests: %s)",
            *(run_id, asked - last, stored - asked, done - stored, tally.summary()),
        )
        tally.reset()
        last = done


# The Fleet calls in the order Flower's ``_init_connection`` yields them after the node id.
CALLS = ("pull-messages", "push-messages", "get-run", "get-fab", "pull-object", "push-object",
         "confirm")  # fmt: skip


class Tally:
    """How many Fleet requests of each kind a message took, and their summed seconds (object
    pulls and pushes run in Flower's thread pools, so a sum can exceed the wall time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, list[float]] = {}
        self.objects: dict[str, set[str]] = {}  # distinct object ids pulled or pushed

    def wrap(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return call(*args, **kwargs)
            finally:
                with self._lock:
                    self.calls.setdefault(name, []).append(time.monotonic() - started)
                    if name.endswith("-object"):  # (run id, [session,] object id, ...)
                        ids = self.objects.setdefault(name, set())
                        ids.add(str(args[2] if name == "push-object" else args[1]))

        return counted

    def reset(self) -> None:
        with self._lock:
            self.calls, self.objects = {}, {}

    def summary(self) -> str:
        """``pull-messages 1x 0.031 s, pull-object 5x 0.120 s (4 objects), ...``: requests
        of each kind, their summed time, and for objects how many distinct ones (a pull is
        asked again while its sender is still uploading it)."""
        with self._lock:
            return ", ".join(
                f"{k} {len(v)}x {sum(v):.3f} s"
                + (f" ({len(self.objects[k])} objects)" if k in self.objects else "")
                for k, v in self.calls.items()
            )


class ShortWaits:
    """The ``time`` module as Flower's SuperNode loop module sees it, with every sleep cut to
    ``step`` seconds: there it only paces checks of the SuperNode's own in-memory state."""

    def __init__(self, step: float) -> None:
        self.step = step

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.step))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """fedllm's own options; everything else is flower-supernode's."""
    parser = argparse.ArgumentParser(prog="python -m fedllm.deploy.supernode", add_help=False)
    defaults = Backoff()
    parser.add_argument("--wakeup-fd", type=int, help="pipe to the executor: written per task")
    parser.add_argument("--poll-fastest", type=float, default=defaults.fastest)
    parser.add_argument("--poll-slowest", type=float, default=defaults.slowest)
    parser.add_argument("--poll-growth", type=float, default=defaults.growth)
    return parser.parse_known_args(argv)


def _isolation_process(flower_args: Sequence[str]) -> bool:
    isolation = argparse.ArgumentParser(add_help=False)
    isolation.add_argument("--isolation")
    return bool(isolation.parse_known_args(flower_args)[0].isolation == "process")


def check_flower() -> None:
    """The loop calls Flower's SuperNode internals: refuse a Flower it was not written for."""
    from flwr.supercore.version import package_version
    from flwr.supernode import fleet_http_connection as http
    from flwr.supernode import start_client_internal as flower

    missing = [
        name
        for name in ("_init_connection", "_pull_and_store_message", "_push_messages", "time")
        if not hasattr(flower, name)
    ] + [f"fleet_http_connection.{EXIT}"] * (not hasattr(http, EXIT))
    missing += [f"{name}.os" for name in INTERRUPTS_ON_401 if not _has_os(name)]
    if not package_version.startswith(FLOWER) or missing:
        raise SystemExit(
            f"fedllm.deploy.supernode needs flwr {FLOWER}x, found {package_version}"
            + (f" without {', '.join(missing)}" if missing else "")
        )


def _has_os(module: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), "os")
    except ImportError:
        return False


def main(argv: Sequence[str] | None = None) -> None:
    args, flower_args = parse(sys.argv[1:] if argv is None else argv)
    if not _isolation_process(flower_args):
        raise SystemExit(ISOLATION_ONLY)
    backoff = Backoff(args.poll_fastest, args.poll_slowest, args.poll_growth)
    wakeup = Wakeup(args.wakeup_fd) if args.wakeup_fd is not None else None
    check_flower()
    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")

    cli.start_client_internal = prompt_loop(backoff, wakeup)  # type: ignore[attr-defined]
    sys.argv = ["flower-supernode", *flower_args]
    cli.flower_supernode()


if __name__ == "__main__":  # pragma: no cover
    main()
