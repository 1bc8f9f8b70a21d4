"""Deployment: the exact ``flower-superlink`` and ``flower-supernode`` command lines an
operator and a site start, checked before anything starts, and the operator's set-up steps
(the Flower CLI's connection entry, registering the sites' node keys).

One source for every flag: ``fedllm superlink start`` / ``fedllm supernode start``, the
integration tests, the benchmark and the compose/Kubernetes files (whose flags a test checks
against the installed commands' ``--help``) all use these command lines.

Security by default: the SuperLink always serves TLS (``--ssl-*``) and accepts only
SuperNodes whose public key was registered (``--enable-supernode-auth``); it never installs
an app's dependencies at run time (``--disable-runtime-dependency-installation``). A SuperNode
always verifies the SuperLink's certificate against the CA (``--root-certificates``) and signs
its requests with its node key (``--auth-supernode-private-key``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedllm.crypto import check_certificate, check_chain, check_node_public_key
from fedllm.crypto.certs import check_private_key_mode
from fedllm.errors import CertificateError, ConfigError, DataError, FedLLMError
from fedllm.protocol import (
    NODE_DATA_PATH,
    NODE_LEDGER_PATH,
    NODE_POLICY_PATH,
    NODE_SITE_KEY,
    NODE_SITE_NAME,
)

SUPERLINK_PORT = 8000  # flower-superlink's default --port (Fleet, Control and Runtime APIs)
SUPERNODE_PORT = 9094  # flower-supernode's default --port (its ClientApp Runtime API)
STATE_DB = "state.db"  # the SuperLink's state database inside its state folder
CONNECTION = "fedllm"  # the [superlink.<name>] entry in $FLWR_HOME/config.toml
# The environment Flower's commands need here (as scripts/env.sh sets for `flwr run`).
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


class DeployError(FedLLMError):
    """A deployment command cannot start: a missing file, a refused key, a dead process."""


@dataclass(frozen=True)
class SuperLinkSettings:
    """An operator's SuperLink: its TLS files (from ``fedllm certs init``), where it listens,
    and the folder holding its state database (runs, registered nodes: survives restarts)."""

    pki: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = SUPERLINK_PORT

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def database(self) -> Path:
        return self.state_dir / STATE_DB

    def check(self) -> None:
        """Fail before starting: valid chain, a certificate naming the address the SuperLink's
        own SuperExec dials (127.0.0.1 when it listens on all interfaces), a private key only
        its owner reads."""
        _check_port(self.port)
        info = check_chain(self.pki / "superlink.crt", self.ca)
        check_private_key_mode(self.pki / "superlink.key")
        dial = _dial_host(self.host)  # what the SuperLink's own SuperExec dials and verifies
        if not info.covers(dial):
            raise CertificateError(
                f"{self.pki / 'superlink.crt'} does not name {dial}, which the SuperLink's own "
                "SuperExec dials; recreate it with `fedllm certs init --host ...` naming it"
            )

    def command(self, exe: str = "flower-superlink") -> list[str]:
        return [
            exe,
            *("--ssl-ca-certfile", str(self.ca)),
            *("--ssl-certfile", str(self.pki / "superlink.crt")),
            *("--ssl-keyfile", str(self.pki / "superlink.key")),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            *("--database", str(self.database)),
            *("--host", self.host, "--port", str(self.port)),
        ]

    def address(self, host: str | None = None) -> str:
        """Where the Flower CLI and SuperNodes on this machine dial it."""
        return host_port(host or _dial_host(self.host), self.port)


@dataclass(frozen=True)
class SiteSettings:
    """A site's SuperNode: the SuperLink it dials, the CA it trusts, its node key, its data
    and its own privacy files (``fedllm site init DIR``: policy.toml, site-key.pem)."""

    superlink: str
    ca: Path
    node_key: Path
    data_path: Path
    site_dir: Path
    name: str
    port: int = SUPERNODE_PORT
    # True: `--isolation process` plus fedllm's warm executor (fedllm/executor.py) runs the
    # ClientApps; False: Flower's default, a fresh `flwr-clientapp` process per message.
    warm: bool = True

    def node_config(self) -> dict[str, str]:
        return {
            NODE_DATA_PATH: str(self.data_path),
            NODE_SITE_NAME: self.name,
            NODE_POLICY_PATH: str(self.site_dir / "policy.toml"),
            NODE_LEDGER_PATH: str(self.site_dir / "ledger.jsonl"),
            NODE_SITE_KEY: str(self.site_dir / "site-key.pem"),
        }

    def check(self) -> None:
        """Fail before starting, naming the file: a CA that is not valid now, a node key
        others may read, a missing data file or site file."""
        _check_port(self.port)
        check_certificate(self.ca)
        if not self.node_key.is_file():
            raise CertificateError(f"node key {self.node_key} does not exist")
        check_private_key_mode(self.node_key)
        if not self.data_path.exists():
            raise DataError(f"the site's data {self.data_path} does not exist")
        for key in (NODE_POLICY_PATH, NODE_SITE_KEY):
            path = Path(self.node_config()[key])
            if not path.is_file():
                raise ConfigError(
                    f"{path} does not exist: create the site's files with "
                    f"`fedllm site init {self.site_dir}`"
                )

    def command(self, exe: str = "flower-supernode") -> list[str]:
        return [
            exe,
            *("--superlink", self.superlink),
            *("--root-certificates", str(self.ca)),
            *("--auth-supernode-private-key", str(self.node_key)),
            *("--node-config", node_config_arg(self.node_config())),
            *("--port", str(self.port)),
            *(("--isolation", "process") if self.warm else ()),
        ]

    def executor_command(self, supernode_pid: int | None, python: str | None = None) -> list[str]:
        """The warm executor beside a ``warm`` SuperNode (same machine: loopback)."""
        import sys

        command = [python or sys.executable, "-m", "fedllm.executor"]
        command += ["--runtime-api-address", host_port("127.0.0.1", self.port)]
        return command + (["--parent-pid", str(supernode_pid)] if supernode_pid else [])


def node_config_arg(values: Mapping[str, str]) -> str:
    """``key="value" ...`` as ``--node-config`` parses it (TOML strings); a value holding a
    quote or a backslash is refused rather than mangled."""
    for key, value in values.items():
        if any(c in value for c in '"\\\n'):
            raise ConfigError(f"node-config `{key}` {value!r} holds a quote or backslash")
    return " ".join(f'{key}="{value}"' for key, value in values.items())


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dial_host(listen_host: str) -> str:
    return "127.0.0.1" if listen_host in ("0.0.0.0", "::", "") else listen_host


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"port must be in 1..65535, got {port}")


def flower_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with Flower's telemetry and runtime
    dependency installation off, and this interpreter's commands first on PATH: the SuperLink
    and the SuperNode start ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp``
    from PATH."""
    import sys

    env = {**(os.environ if base is None else base), **FLOWER_ENV}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def executable(name: str) -> str:
    """A Flower command from this interpreter's environment, else from PATH."""
    import sys

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


def write_connection(flwr_home: Path, name: str, address: str, ca: Path) -> Path:
    """Adds or replaces ``[superlink.<name>]`` (address, root-certificates) in
    ``flwr_home/config.toml``, the entry ``flwr run . <name>`` and ``flwr supernode`` use."""
    import tomllib

    path = flwr_home / "config.toml"
    flwr_home.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    entry = (
        f"[superlink.{name}]\naddress = {_toml(address)}\n"
        f"root-certificates = {_toml(str(ca.resolve()))}\n"
    )
    header = f"[superlink.{name}]"
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            skipping = stripped == header
        if not skipping:
            kept.append(line)
    body = "\n".join(kept).rstrip()
    path.write_text((body + "\n\n" if body else "") + entry)
    return path


def _toml(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a valid TOML basic string


def register_nodes(public_keys: Sequence[Path], connection: str) -> list[str]:
    """What ``flwr supernode register KEY.pub CONNECTION`` does, for every key over one
    connection (the CLI takes seconds to start per key): the SuperLink accepts each key's
    owner from now on, under the key file's name. A key already registered is not an error (a
    restarted SuperLink keeps its registrations in its state database). ``$FLWR_HOME`` must
    hold the connection. Returns one line per key."""
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest

    for key in public_keys:
        check_node_public_key(key)
    client = init_http_client_from_connection(read_superlink_connection(connection))
    lines = []
    try:
        known = {
            bytes(node.public_key): node.node_id
            for node in client.ListNodes(ListNodesRequest()).nodes_info
            if node.status != "unregistered"
        }
        for key in public_keys:
            public = try_load_public_key(key)
            if public in known:
                lines.append(f"{key.name}: already registered as SuperNode {known[public]}")
                continue
            request = RegisterNodeRequest(public_key=public, name=key.stem)
            try:
                node_id = client.RegisterNode(request=request).node_id
            except Exception as err:  # Flower's HTTP client raises its own errors
                raise DeployError(f"registering {key} failed: {err}") from None
            lines.append(f"{key.name}: registered as SuperNode {node_id}")
    finally:
        client.close()
    return lines


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
