"""Starting and stopping Flower's own commands: the environment they need, where they are
installed, waiting until one listens, stopping a group of them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedllm.errors import DeployError

# The environment Flower's commands need here (as scripts/env.sh sets for `flwr run`).
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flower_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with Flower's telemetry and runtime
    dependency installation off, and this interpreter's commands first on PATH: the SuperLink
    and the SuperNode start ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp``
    from PATH."""
    env = {**(os.environ if base is None else base), **FLOWER_ENV}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def executable(name: str) -> str:
    """A Flower command from this interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"`{name}` is not installed (pip install flwr==1.42.0)")
    return found


def wait_listening(
    host: str, port: int, process: subprocess.Popen[bytes], timeout: float, log: Path | None
) -> None:
    """Returns once ``host:port`` accepts TCP connections; raises if ``process`` exits or
    ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise DeployError(f"{process.args!r} exited with {process.returncode}:\n{tail}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise DeployError(
                    f"nothing listens on {host}:{port} after {timeout:.0f} s"
                ) from None
            time.sleep(0.2)


def stop(processes: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM each process, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
