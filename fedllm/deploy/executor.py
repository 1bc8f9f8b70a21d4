"""A warm SuperExec for a SuperNode: each ClientApp task runs in a process forked from one that
has already imported the heavy libraries (torch, opacus, numpy, scipy, flwr).

With Flower's default ``--isolation subprocess`` every message (train, evaluate) starts a fresh
``flwr-clientapp`` process that imports torch and the app again: seconds per message on a busy
CPU. Started beside ``flower-supernode --isolation process``, this executor polls the
SuperNode's Runtime API for tasks, exactly as ``flower-superexec`` does, and runs each one with
Flower's own ``run_clientapp`` in a forked child: same token, same FAB installation, same
ClientApp loading, same reply path. Only the import work is shared.

The app's own packages (``--fresh``, default ``fedllm``, ``clients``, ``server``) are imported to
warm their dependencies, then dropped from ``sys.modules`` before any fork, so every task
imports the app from the FAB the run shipped, as Flower intends, not from the warm process.

Run: ``python -m fedllm.deploy.executor --runtime-api-address 127.0.0.1:9094 --parent-pid PID``
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

logger = logging.getLogger(__name__)

DEFAULT_PRELOAD = ("torch", "opacus", "numpy", "scipy.stats", "clients.client_app")
DEFAULT_FRESH = ("fedllm", "clients", "server")
POLL_INTERVAL = 0.1  # seconds between AcquireTask calls (flower-superexec: 1 s)


def preload(modules: Sequence[str], fresh: Sequence[str]) -> None:
    """Import ``modules``; then forget the ``fresh`` packages so tasks import them anew."""
    for name in modules:
        importlib.import_module(name)
    for name in list(sys.modules):
        if name.split(".")[0] in fresh:
            del sys.modules[name]


def run_task(runtime_api_address: str, token: str) -> None:
    """In a forked child: Flower's own ClientApp process body, then exit without returning
    to the parent's loop."""
    code = 1
    try:
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        run_clientapp(
            runtime_api_address=runtime_api_address,
            token=token,
            insecure=True,  # the Runtime API listens on loopback, as flower-superexec uses it
            certificates=None,
            parent_pid=None,
            runtime_dependency_install=False,
        )
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:
        logger.exception("ClientApp task failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(runtime_api_address: str, parent_pid: int | None, poll: float = POLL_INTERVAL) -> None:
    """Acquire ClientApp tasks from the SuperNode's Runtime API and fork one child per task;
    returns when ``parent_pid`` (the SuperNode) is gone."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    children: set[int] = set()
    try:
        while parent_pid is None or _alive(parent_pid):
            _reap(children)
            response = client.AcquireTask(
                AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
            )
            if response.HasField("task") and response.token:
                pid = os.fork()
                if pid == 0:
                    client.close()
                    run_task(runtime_api_address, response.token)
                children.add(pid)
                logger.info("task %d: ClientApp in process %d", response.task.task_id, pid)
                continue
            time.sleep(poll)
    finally:
        client.close()
        for pid in children:
            _signal(pid, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(children: set[int]) -> None:
    for pid in list(children):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedllm.deploy.executor", description=__doc__)
    parser.add_argument(
        "--runtime-api-address",
        required=True,
        help="the SuperNode's Runtime API (host:port of flower-supernode --port)",
    )
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process (the SuperNode) is gone"
    )
    parser.add_argument(
        "--preload",
        action="append",
        help=f"a module to import once (repeatable; default {', '.join(DEFAULT_PRELOAD)})",
    )
    parser.add_argument(
        "--fresh",
        action="append",
        help="a top-level package every task imports anew from the run's FAB "
        f"(repeatable; default {', '.join(DEFAULT_FRESH)})",
    )
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()  # this command's own lines only, not every library's
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s fedllm.deploy.executor: %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.monotonic()
    preload(args.preload or DEFAULT_PRELOAD, args.fresh or DEFAULT_FRESH)
    logger.info(
        "warm in %.1f s; serving ClientApp tasks of %s",
        time.monotonic() - started,
        args.runtime_api_address,
    )
    serve(args.runtime_api_address, args.parent_pid)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
