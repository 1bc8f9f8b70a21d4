"""One long-lived ClientApp process per run at a site, forked from the warm executor.

Flower runs each ClientApp task (one message: setup, key sharing, train, unmask, evaluate) in a
fresh process that imports the app and then exits, so nothing the app learnt in one task
(the site's data loaded and scaled, its verified ledger) survives to the next. The executor
(:mod:`fedllm.deploy.executor`) instead hands every task of a run to that run's worker: a
process forked once, on the run's first task, that keeps the app imported and its caches warm
until the run has been idle ``idle_timeout`` seconds. Runs never share a worker, so one run's
state is never seen by another's code.

Each task is Flower's own ClientApp task body (``flwr.supernode.runtime.run_clientapp``:
the task token, the pull of the message, context, run and FAB, the FAB installation, the app
loading, the reply and the task's final status and context), run in a loop instead of once per
process. App pinning stays exactly as strong: every task's FAB goes through
:func:`pinned_install` (the site's ``trusted-apps.toml`` re-read, the digest checked) before
the app is loaded or called, and a worker serves only the run and FAB digest it was started
for.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedllm.deploy.pinning import FabInfo, TrustedApps, pinned_home
from fedllm.deploy.polling import quick_object_retries
from fedllm.errors import AppNotTrustedError, FedLLMError

logger = logging.getLogger(__name__)

IDLE_TIMEOUT = 300.0  # seconds a run's worker waits for its next task before exiting
INSTALL_LOCK = ".install.lock"  # in a pinned Flower home: one FAB install at a time


def pinned_install(install: Callable[..., Any], trusted_apps: Path) -> Callable[..., Any]:
    """Flower's ``install_from_fab`` behind the site's pin: the first thing Flower does with a
    task's FAB, before any of its files are written or imported. An untrusted FAB raises
    AppNotTrustedError, which the task body turns into an error reply to the run. The list of
    trusted apps is re-read for every task; a FAB this process has installed already is not
    written again (its modules are loaded from there)."""
    base: Path | None = None  # the site's Flower home, before it is narrowed to one FAB
    installed: dict[str, Any] = {}

    def install_pinned(fab_file: bytes, *args: Any, **kwargs: Any) -> Any:
        from flwr.supercore.utils import get_flwr_home

        nonlocal base
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
        if fab.sha256 in installed:
            return installed[fab.sha256]
        logger.info("run %s: %s is pinned (%s)", run, fab.describe(), app.basis)
        # Flower loads the app by the run's (fab_id, version, hash) from its home: one that
        # holds only this FAB cannot lead it to any other installed app.
        base = base or get_flwr_home()
        home = pinned_home(base, fab.sha256)
        os.environ["FLWR_HOME"] = str(home)
        # Flower's installer makes the app folder, then copies the files into it, and returns
        # a folder that exists as installed: another worker installing the same FAB into the
        # same home (two runs of one app, or SuperNodes sharing a Flower home) would load a
        # half-copied app. One install at a time per pinned home.
        home.mkdir(parents=True, exist_ok=True)
        with open(home / INSTALL_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                installed[fab.sha256] = install(fab_file, *args, **kwargs)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return installed[fab.sha256]

    return install_pinned


def _run_id() -> str:
    """The run of the task being set up (Flower sets it before installing the FAB)."""
    from flwr.supercore.task_identity import TaskIdentity

    try:
        return str(TaskIdentity.run_id)
    except RuntimeError:
        return "?"


@dataclass(frozen=True)
class Assignment:
    """What a worker serves: one run, one FAB digest, on one SuperNode's Runtime API."""

    runtime_api_address: str
    trusted_apps: Path
    run_id: int
    fab_hash: str
    idle_timeout: float = IDLE_TIMEOUT
    max_tasks: int = 0  # 0: no limit; 1: a fresh process per task (the executor's --cold)


def run_task(assignment: Assignment, token: str) -> None:
    """One ClientApp task, as Flower's ``run_clientapp`` runs it, without exiting the process:
    pull the inputs with ``token``, install the (pinned) FAB, load the ClientApp, call it, push
    the reply, then the task's status and the context (the node's state for the next task)."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor
    from flwr.supernode.runtime import run_clientapp as flower

    retry = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=assignment.runtime_api_address,
        insecure=True,  # the Runtime API listens on loopback, as flower-superexec uses it
        root_certificates=None,
        interceptors=[
            RuntimeTracingInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry,
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = reply = context = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    clock = Clock()
    try:
        heartbeat.start()
        message, context, run, fab = flower.pull_task_input(client)
        clock.lap("pull")
        if run.run_id != assignment.run_id or fab.hash_str != assignment.fab_hash:
            raise AppNotTrustedError(
                f"this worker serves run {assignment.run_id} (sha256 {assignment.fab_hash}), "
                f"not run {run.run_id} (sha256 {fab.hash_str})"
            )
        flower.install_from_fab(fab.content, skip_prompt=True)  # type: ignore[attr-defined]
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        client_app = load(run.fab_id, run.fab_version, fab.hash_str)
        clock.lap("app")
        reply = client_app(message=message, context=context)
        clock.lap(message.metadata.message_type)
        status, details = SubStatus.COMPLETED, ""
    except Exception as err:  # as Flower's task body: an error reply, the task failed
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        reason = f"{type(err)}:<'{err}'>"
        if isinstance(err, LoadClientAppError):
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            reason = "An exception was raised when attempting to load `ClientApp`"
        logger.error("ClientApp raised an exception", exc_info=err)
        details = reason
        if message is not None:
            reply = Message(Error(code=code, reason=reason), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                flower.push_message(client, reply, context)
                clock.lap("reply")
        except Exception as err:
            logger.error("failed to push the reply", exc_info=err)
        retry.max_tries = 1  # as Flower's exit handler: do not block on the final status
        flower.push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    logger.info("run %s: task done in %s", assignment.run_id, clock.summary())


class Clock:
    """Where a task's time went: named laps, for the site's log."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps.append((name, now - self.last))
        self.last = now

    def summary(self) -> str:
        total = sum(seconds for _, seconds in self.laps)
        return f"{total:.3f} s (" + ", ".join(f"{n} {s:.3f}" for n, s in self.laps) + ")"


def serve_run(assignment: Assignment, tasks_fd: int) -> None:
    """The worker's body, in the forked child: tokens arrive one a line on ``tasks_fd``; runs
    each; exits (never returns) when the executor closes the pipe, after ``max_tasks``, or
    after ``idle_timeout`` seconds without a task."""
    code = 0
    try:
        from flwr.supernode.runtime import run_clientapp as flower

        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        quick_object_retries(flower)  # a task's objects may still be on their way
        # The one name Flower's task body installs the FAB with (flwr 1.42): behind the pin.
        install = flower.install_from_fab  # type: ignore[attr-defined]
        flower.install_from_fab = pinned_install(install, assignment.trusted_apps)  # type: ignore[attr-defined]
        for served, token in enumerate(_tokens(tasks_fd, assignment.idle_timeout), 1):
            run_task(assignment, token)
            if served == assignment.max_tasks:
                break
    except BaseException:
        logger.exception("run %s: worker failed", assignment.run_id)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _tokens(fd: int, idle_timeout: float) -> Iterator[str]:
    """Task tokens, one a line, until end of file or ``idle_timeout`` seconds of silence."""
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()
        ready, _, _ = select.select([fd], [], [], idle_timeout)
        if not ready:
            logger.info("worker idle for %.0f s: exiting", idle_timeout)
            return
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buffer += chunk


@dataclass
class Worker:
    """A forked worker as the executor sees it: its pid and the write end of its task pipe."""

    pid: int
    tasks: int  # write end
    used: float = field(default_factory=time.monotonic)

    def send(self, token: str) -> bool:
        """Queue a task; False when the worker is gone."""
        try:
            os.write(self.tasks, token.encode() + b"\n")  # one write, below PIPE_BUF
        except (BrokenPipeError, OSError):
            return False
        self.used = time.monotonic()
        return True


class RunWorkers:
    """The executor's workers, one per (run, FAB digest); at most ``limit`` at once (the
    least recently used is stopped to make room)."""

    def __init__(
        self,
        runtime_api_address: str,
        trusted_apps: Path,
        idle_timeout: float = IDLE_TIMEOUT,
        per_task: bool = False,
        limit: int = 4,
    ) -> None:
        self.runtime_api_address = runtime_api_address
        self.trusted_apps = trusted_apps
        self.idle_timeout = idle_timeout
        self.per_task = per_task
        self.limit = limit
        self.workers: dict[tuple[int, str], Worker] = {}
        self.stopping: set[int] = set()  # told to exit, not yet reaped

    def dispatch(self, run_id: int, fab_hash: str, token: str, close: Callable[[], None]) -> int:
        """Hands the task to its run's worker (started if need be); returns the worker's pid.
        ``close`` runs in a new worker before anything else (the parent's connections)."""
        key = (run_id, fab_hash)
        worker = None if self.per_task else self.workers.get(key)
        if worker is not None and worker.send(token):
            return worker.pid
        worker = self._start(key, close)
        if not worker.send(token):
            raise FedLLMError(f"the worker for run {run_id} exited before its first task")
        return worker.pid

    def _start(self, key: tuple[int, str], close: Callable[[], None]) -> Worker:
        self.reap()
        if key in self.workers:
            self._stop(key)
        while len(self.workers) >= self.limit:
            self._stop(min(self.workers, key=lambda k: self.workers[k].used))
        assignment = Assignment(
            self.runtime_api_address,
            self.trusted_apps,
            *key,
            idle_timeout=self.idle_timeout,
            max_tasks=1 if self.per_task else 0,
        )
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: nothing of the executor's but what it forked with
            os.close(write)
            for other in self.workers.values():
                os.close(other.tasks)  # so each worker sees the executor go
            close()
            serve_run(assignment, read)
        os.close(read)
        worker = Worker(pid, write)
        if not self.per_task:
            self.workers[key] = worker
        else:
            self.workers[(key[0], f"{key[1]}/{pid}")] = worker
        logger.info("run %s: worker process %d", key[0], pid)
        return worker

    def reap(self) -> None:
        """Forget workers that exited (idle, done, or killed)."""
        for key, worker in list(self.workers.items()):
            if _exited(worker.pid):
                os.close(worker.tasks)
                del self.workers[key]
        self.stopping = {pid for pid in self.stopping if not _exited(pid)}

    def _stop(self, key: tuple[int, str]) -> None:
        worker = self.workers.pop(key)
        os.close(worker.tasks)  # end of file: it exits after its current task
        self.stopping.add(worker.pid)

    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers.values()]

    def close(self) -> None:
        for key in list(self.workers):
            worker = self.workers.pop(key)
            os.close(worker.tasks)
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)


def _exited(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0
