"""A warm SuperExec for a SuperNode: ClientApp tasks run in processes forked from one that has
already imported the heavy libraries (torch, opacus, numpy, scipy, flwr), one process per run.

With Flower's default ``--isolation subprocess`` every message (train, evaluate) starts a fresh
``flwr-clientapp`` process that imports torch and the app again: seconds per message on a busy
CPU. Started beside the SuperNode (``--isolation process``), this executor asks the
SuperNode's Runtime API for tasks, as ``flower-superexec`` does, and hands each one to its
run's worker (:mod:`fedllm.deploy.worker`): a child forked on the run's first task that runs
Flower's own ClientApp task body (same token, same FAB installation, same ClientApp loading,
same reply path) for every task of that run, so the app, the site's data and its verified
ledger stay loaded between the messages of a round and between rounds.

The app's own packages (``--fresh``, default ``fedllm``, ``clients``, ``server``) are imported to
warm their dependencies, then dropped from ``sys.modules`` before any fork, so each run's
worker imports the app from the FAB the run shipped, as Flower intends, not from the warm
process. ``--cold`` preloads nothing and forks a fresh process per task: each task imports
everything itself, as ``flwr-clientapp`` does.

When the SuperNode is fedllm's (:mod:`fedllm.deploy.supernode`, started by ``fedllm supernode
start``) it wakes the executor through an inherited pipe (``--wakeup-fd``) as soon as it has
stored a task; otherwise the executor polls with :class:`~fedllm.deploy.polling.Backoff`.

Two guards, both before any code of the run's app exists on disk or in memory:

- **App pinning**: the worker checks the FAB's SHA-256 against the site's
  ``trusted-apps.toml`` (:mod:`fedllm.deploy.pinning`, re-read for every task) before
  Flower installs it (:func:`~fedllm.deploy.worker.pinned_install`). An app the site does
  not trust is refused: an ERROR line at the site names the run, the app and its digest, and
  the run gets an error reply, never data. A trusted FAB is installed into a Flower home
  that holds only that FAB, so what Flower then loads is what was checked.
- **SuperExec authentication**: ``AcquireTask`` is signed with the shared secret the
  SuperNode was started with (``--superexec-auth-secret-file`` on both), so no other local
  process can take the site's ClientApp tasks.

Run: ``python -m fedllm.deploy.executor --runtime-api-address 127.0.0.1:9094
--trusted-apps SITE/trusted-apps.toml --superexec-auth-secret-file SITE/superexec.secret``
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedllm.deploy.pinning import TrustedApps
from fedllm.deploy.polling import Backoff, Wakeup
from fedllm.deploy.worker import IDLE_TIMEOUT, RunWorkers, pinned_install

__all__ = ["main", "pinned_install", "preload", "read_secret", "serve"]
from fedllm.errors import FedLLMError

logger = logging.getLogger("fedllm.deploy.executor")  # its name also when run as __main__

DEFAULT_PRELOAD = ("torch", "opacus", "numpy", "scipy.stats", "clients.client_app")
DEFAULT_FRESH = ("fedllm", "clients", "server")
SAFETY_POLL = 5.0  # seconds between AcquireTask calls while a wake-up pipe is watched
ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"  # the call the SuperExec secret signs


def preload(modules: Sequence[str], fresh: Sequence[str]) -> None:
    """Import ``modules``; then forget the ``fresh`` packages so tasks import them anew."""
    for name in modules:
        importlib.import_module(name)
    for name in list(sys.modules):
        if name.split(".")[0] in fresh:
            del sys.modules[name]


def serve(
    runtime_api_address: str,
    parent_pid: int | None,
    secret: bytes,
    workers: RunWorkers,
    wakeup: Wakeup | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Acquire ClientApp tasks from the SuperNode's Runtime API (signed with the SuperExec
    ``secret``) and hand each to its run's worker; returns when ``parent_pid`` (the SuperNode)
    is gone. Between tasks it waits for ``wakeup`` (checking every few seconds anyway) or,
    without one, as ``backoff`` says."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    backoff = backoff or Backoff(slowest=1.0)
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=[ACQUIRE_TASK]),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    last = time.monotonic()
    try:
        while parent_pid is None or _alive(parent_pid):
            workers.reap()
            response = client.AcquireTask(
                AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
            )
            if response.HasField("task") and response.token:
                task = response.task
                pid = workers.dispatch(task.run_id, task.fab_hash, response.token, client.close)
                logger.info("task %d of run %d: worker %d", task.task_id, task.run_id, pid)
                last = time.monotonic()
                continue
            if wakeup is not None:
                wakeup.wait(SAFETY_POLL)
            else:
                time.sleep(backoff.wait(time.monotonic() - last))
    finally:
        client.close()
        workers.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        "--trusted-apps",
        type=Path,
        required=True,
        help="the site's trusted-apps.toml: every task's FAB must be pinned there",
    )
    parser.add_argument(
        "--superexec-auth-secret-file",
        type=Path,
        required=True,
        help="the secret flower-supernode was given (same flag): signs AcquireTask",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="preload nothing and fork a fresh process per task: each task imports torch and "
        "the app itself (less memory, as flwr-clientapp)",
    )
    parser.add_argument(
        "--wakeup-fd",
        type=int,
        help="a pipe fedllm's SuperNode writes to when it has a task (fedllm supernode start)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        help=f"seconds a run's worker waits for its next task (default {IDLE_TIMEOUT:.0f})",
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
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    deploy_logger = logging.getLogger("fedllm.deploy")  # the executor's and its workers'
    deploy_logger.addHandler(handler)
    deploy_logger.setLevel(logging.INFO)
    deploy_logger.propagate = False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        secret = read_secret(args.superexec_auth_secret_file)
        trusted = TrustedApps.load(args.trusted_apps)
        wakeup = Wakeup(args.wakeup_fd) if args.wakeup_fd is not None else None
    except FedLLMError as err:
        logger.error("%s", err)
        return 2
    if not trusted.apps:
        logger.warning(
            "%s trusts no app: every run will be refused (fedllm site trust)", args.trusted_apps
        )
    started = time.monotonic()
    preload([] if args.cold else args.preload or DEFAULT_PRELOAD, args.fresh or DEFAULT_FRESH)
    logger.info(
        "%s in %.1f s; serving ClientApp tasks of %s (%s), apps pinned in %s (%d trusted)",
        "cold start" if args.cold else "warm",
        time.monotonic() - started,
        args.runtime_api_address,
        "woken by the SuperNode" if wakeup else "polling",
        args.trusted_apps,
        len(trusted.apps),
    )
    workers = RunWorkers(
        args.runtime_api_address, args.trusted_apps, args.idle_timeout, per_task=args.cold
    )
    serve(args.runtime_api_address, args.parent_pid, secret, workers, wakeup)
    return 0


def read_secret(path: Path) -> bytes:
    """The SuperExec secret's exact bytes (as Flower reads them), from a file other users
    cannot read (its group may: Kubernetes mounts Secrets for the pod's fsGroup)."""
    from fedllm.errors import CertificateError

    if not path.is_file():
        raise CertificateError(
            f"SuperExec secret {path} does not exist (fedllm site init makes superexec.secret)"
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o007:
        raise CertificateError(f"SuperExec secret {path} has mode {mode:04o}; others can read it")
    secret = path.read_bytes()
    if len(secret) < 32:
        raise CertificateError(f"SuperExec secret {path} is shorter than 32 bytes")
    return secret


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
