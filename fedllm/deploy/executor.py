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
``--cold`` preloads nothing: each task imports everything itself, as ``flwr-clientapp`` does.

Two guards, both before any code of the run's app exists on disk or in memory:

- **App pinning**: the child checks the FAB's SHA-256 against the site's
  ``trusted-apps.toml`` (:mod:`fedllm.deploy.pinning`, re-read for every task) before
  Flower installs it. An app the site does not trust is refused: an ERROR line at the site
  names the run, the app and its digest, and the run gets an error reply, never data. A
  trusted FAB is installed into a Flower home that holds only that FAB, so what Flower then
  loads is what was checked.
- **SuperExec authentication**: ``AcquireTask`` is signed with the shared secret the
  SuperNode was started with (``--superexec-auth-secret-file`` on both), so no other local
  process can take the site's ClientApp tasks.

Run: ``python -m fedllm.deploy.executor --runtime-api-address 127.0.0.1:9094
--trusted-apps SITE/trusted-apps.toml --superexec-auth-secret-file SITE/superexec.secret``
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedllm.deploy.pinning import FabInfo, TrustedApps, pinned_home
from fedllm.errors import AppNotTrustedError, FedLLMError

logger = logging.getLogger(__name__)

DEFAULT_PRELOAD = ("torch", "opacus", "numpy", "scipy.stats", "clients.client_app")
DEFAULT_FRESH = ("fedllm", "clients", "server")
POLL_INTERVAL = 0.1  # seconds between AcquireTask calls (flower-superexec: 1 s)
ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"  # the call the SuperExec secret signs


def preload(modules: Sequence[str], fresh: Sequence[str]) -> None:
    """Import ``modules``; then forget the ``fresh`` packages so tasks import them anew."""
    for name in modules:
        importlib.import_module(name)
    for name in list(sys.modules):
        if name.split(".")[0] in fresh:
            del sys.modules[name]


def run_task(runtime_api_address: str, token: str, trusted_apps: Path) -> None:
    """In a forked child: Flower's own ClientApp process body, with the FAB checked against
    ``trusted_apps`` before Flower installs it; then exit without returning to the parent's
    loop."""
    code = 1
    try:
        from flwr.supernode.runtime import run_clientapp as flower

        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # The one name Flower's task body installs the FAB with (flwr 1.42): behind the pin.
        install = flower.install_from_fab  # type: ignore[attr-defined]
        flower.install_from_fab = pinned_install(install, trusted_apps)  # type: ignore[attr-defined]
        flower.run_clientapp(
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


def pinned_install(install: Callable[..., Any], trusted_apps: Path) -> Callable[..., Any]:
    """Flower's ``install_from_fab`` behind the site's pin: the first thing Flower does with a
    task's FAB, before any of its files are written or imported. An untrusted FAB raises
    AppNotTrustedError, which Flower's task body turns into an error reply to the run."""

    def install_pinned(fab_file: bytes, *args: Any, **kwargs: Any) -> Any:
        from flwr.supercore.utils import get_flwr_home

        fab = FabInfo.of(fab_file)
        run = _run_id()
        try:
            trusted = TrustedApps.load(trusted_apps)
        except FedLLMError as err:  # fail closed: no list, no app
            logger.error("refused run %s: %s; %s cannot be checked", run, err, fab.describe())
            raise AppNotTrustedError(
                f"this site does not run {fab.describe()}: its list of trusted apps is unreadable"
            ) from None
        try:
            app = trusted.check(fab)
        except AppNotTrustedError as err:
            logger.error(
                "refused run %s: %s (pinned in %s: %s); nothing of it was installed or run",
                *(run, err, trusted_apps, trusted.summary()),
            )
            raise
        logger.info("run %s: %s is pinned (%s)", run, fab.describe(), app.basis)
        # Flower loads the app by the run's (fab_id, version, hash) from its home: one that
        # holds only this FAB cannot lead it to any other installed app.
        os.environ["FLWR_HOME"] = str(pinned_home(get_flwr_home(), fab.sha256))
        return install(fab_file, *args, **kwargs)

    return install_pinned


def _run_id() -> str:
    """The run of the task being set up (Flower sets it before installing the FAB)."""
    from flwr.supercore.task_identity import TaskIdentity

    try:
        return str(TaskIdentity.run_id)
    except RuntimeError:
        return "?"


def serve(
    runtime_api_address: str,
    parent_pid: int | None,
    trusted_apps: Path,
    secret: bytes,
    poll: float = POLL_INTERVAL,
) -> None:
    """Acquire ClientApp tasks from the SuperNode's Runtime API (signed with the SuperExec
    ``secret``) and fork one child per task; returns when ``parent_pid`` (the SuperNode) is
    gone."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

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
                    run_task(runtime_api_address, response.token, trusted_apps)
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
        help="preload nothing: each task imports torch and the app itself (less memory)",
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
    try:
        secret = read_secret(args.superexec_auth_secret_file)
        trusted = TrustedApps.load(args.trusted_apps)
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
        "%s in %.1f s; serving ClientApp tasks of %s, apps pinned in %s (%d trusted)",
        "cold start" if args.cold else "warm",
        time.monotonic() - started,
        args.runtime_api_address,
        args.trusted_apps,
        len(trusted.apps),
    )
    serve(args.runtime_api_address, args.parent_pid, args.trusted_apps, secret)
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
