"""The SuperLink's and a SuperNode's settings, checked before anything starts, and the exact
``flower-superlink`` / SuperNode command lines they give.

One source for every flag: ``fedllm superlink start`` / ``fedllm supernode start``, the
integration tests, the benchmark and the compose/Kubernetes files (whose flags a test checks
against the installed commands' ``--help``) all use these command lines.

Security by default: the SuperLink always serves TLS (``--ssl-*``) and accepts only
SuperNodes whose public key was registered (``--enable-supernode-auth``); it never installs
an app's dependencies at run time (``--disable-runtime-dependency-installation``). It listens
on loopback only; the public address is fedllm's gate (:mod:`fedllm.deploy.gate`), which
passes the Fleet API and refuses the Control and Runtime APIs to the network. A SuperNode is
Flower's with fedllm's prompt pull loop (:mod:`fedllm.deploy.supernode`, every other flag
Flower's own); it always verifies the SuperLink's certificate against the CA
(``--root-certificates``), signs its requests with the node key made at the site
(``--auth-supernode-private-key``), leaves its ClientApps to fedllm's executor
(``--isolation process``: the executor runs only the apps the site pinned) and lets only the
holder of the site's SuperExec secret take its tasks (``--superexec-auth-secret-file``, given
to the executor too).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedllm.crypto import check_certificate, check_chain
from fedllm.crypto.certs import check_private_key_mode
from fedllm.deploy.pinning import TrustedApps
from fedllm.deploy.site_files import SiteFiles
from fedllm.errors import CertificateError, ConfigError, DataError
from fedllm.protocol import (
    NODE_DATA_PATH,
    NODE_LEDGER_PATH,
    NODE_POLICY_PATH,
    NODE_SITE_KEY,
    NODE_SITE_NAME,
)

SUPERLINK_PORT = 8000  # the public port (fedllm's gate: the Fleet API only)
CONTROL_PORT = 9093  # flower-superlink's own port on loopback (Fleet, Control, Runtime APIs)
SUPERNODE_PORT = 9094  # flower-supernode's default --port (its ClientApp Runtime API)
STATE_DB = "state.db"  # the SuperLink's state database inside its state folder
IN_MEMORY = ":flwr-in-memory:"  # flower-superlink's --database for its state in memory
CONNECTION = "fedllm"  # the [superlink.<name>] entry in $FLWR_HOME/config.toml
EXECUTOR_MODULE = "fedllm.deploy.executor"  # `python -m` this: the warm ClientApp executor
SUPERNODE_MODULE = "fedllm.deploy.supernode"  # `python -m` this: flower-supernode, prompt pulls
GATE_MODULE = "fedllm.deploy.gate"  # `python -m` this: the SuperLink's public Fleet API gate
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class SuperLinkSettings:
    """An operator's SuperLink: its TLS files (from ``fedllm certs init``), the public address
    SuperNodes dial (``host:port``, served by the gate), the loopback port of
    ``flower-superlink`` itself (``control_port``: the Flower CLI on this machine dials it),
    and the folder holding its state database (runs, registered nodes: survives restarts), or
    ``None``: the state in the SuperLink's memory (Flower's in-memory state and object store,
    about half the SuperLink's work per request; lost at a restart, where ``fedllm superlink
    start`` registers the sites' keys again; see deploy/README.md, "Round latency")."""

    pki: Path
    state_dir: Path | None
    host: str = LOOPBACK
    port: int = SUPERLINK_PORT
    control_port: int = CONTROL_PORT

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def database(self) -> str:
        """flower-superlink's ``--database``: the state file, or its in-memory state."""
        return IN_MEMORY if self.state_dir is None else str(self.state_dir / STATE_DB)

    def check(self) -> None:
        """Fail before starting: two distinct valid ports, a valid chain, a certificate
        naming 127.0.0.1 (the gate, the SuperLink's own SuperExec and the Flower CLI dial
        flower-superlink there), a private key only its owner reads."""
        _check_port(self.port)
        _check_port(self.control_port)
        if self.port == self.control_port:
            raise ConfigError(
                f"the public port and the SuperLink's loopback port are both {self.port}"
            )
        info = check_chain(self.pki / "superlink.crt", self.ca)
        check_private_key_mode(self.pki / "superlink.key")
        if not info.covers(LOOPBACK):
            raise CertificateError(
                f"{self.pki / 'superlink.crt'} does not name {LOOPBACK}, where the gate, the "
                "SuperLink's own SuperExec and the Flower CLI dial it; recreate it with "
                "`fedllm certs init --host ...` (which adds it)"
            )

    def command(self, exe: str = "flower-superlink") -> list[str]:
        """flower-superlink on loopback: its Control and Runtime APIs never face the network."""
        return [
            exe,
            *("--ssl-ca-certfile", str(self.ca)),
            *("--ssl-certfile", str(self.pki / "superlink.crt")),
            *("--ssl-keyfile", str(self.pki / "superlink.key")),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            *("--database", self.database),
            *("--host", LOOPBACK, "--port", str(self.control_port)),
        ]

    def gate_command(self, python: str | None = None) -> list[str]:
        """The gate on the public address, forwarding the Fleet API to flower-superlink."""
        return [
            *(python or sys.executable, "-m", GATE_MODULE),
            *("--listen", host_port(self.host, self.port)),
            *("--upstream", self.address()),
            *("--ssl-certfile", str(self.pki / "superlink.crt")),
            *("--ssl-keyfile", str(self.pki / "superlink.key")),
            *("--ssl-ca-certfile", str(self.ca)),
        ]

    @property
    def dial_host(self) -> str:
        """The host this machine dials the gate at: 127.0.0.1 when it listens on all
        interfaces."""
        return LOOPBACK if self.host in ("0.0.0.0", "::", "") else self.host

    def address(self) -> str:
        """flower-superlink itself, for the Flower CLI on this machine (Control API)."""
        return host_port(LOOPBACK, self.control_port)

    def fleet_address(self, host: str | None = None) -> str:
        """The gate, where SuperNodes dial (``host``: the name they use, default this
        machine's)."""
        return host_port(host or self.dial_host, self.port)


@dataclass(frozen=True)
class SiteSettings:
    """A site's SuperNode: the SuperLink it dials, the CA it trusts, its node key, its data
    and its own folder (``fedllm site init DIR``: policy, keys, SuperExec secret, trusted
    apps; :class:`~fedllm.deploy.site_files.SiteFiles`)."""

    superlink: str
    ca: Path
    node_key: Path
    data_path: Path
    site_dir: Path
    name: str
    port: int = SUPERNODE_PORT
    # True: fedllm's executor (fedllm/deploy/executor.py) imports torch and opacus once and
    # forks a child per task; False: it preloads nothing (each task imports them itself).
    warm: bool = True

    @property
    def files(self) -> SiteFiles:
        return SiteFiles(self.site_dir)

    def node_config(self) -> dict[str, str]:
        return {
            NODE_DATA_PATH: str(self.data_path),
            NODE_SITE_NAME: self.name,
            NODE_POLICY_PATH: str(self.files.policy),
            NODE_LEDGER_PATH: str(self.files.ledger),
            NODE_SITE_KEY: str(self.files.site_key),
        }

    def check(self) -> TrustedApps:
        """Fail before starting, naming the file: a CA that is not valid now, a node key or
        SuperExec secret others may read, a missing data file or site file, a malformed
        trusted-apps file. Returns what the site trusts."""
        _check_port(self.port)
        check_certificate(self.ca)
        if not self.node_key.is_file():
            raise CertificateError(
                f"node key {self.node_key} does not exist (`fedllm site init` makes one)"
            )
        check_private_key_mode(self.node_key)
        if not self.data_path.exists():
            raise DataError(f"the site's data {self.data_path} does not exist")
        files = self.files
        for path in (files.policy, files.site_key, files.superexec_secret, files.trusted_apps):
            if not path.is_file():
                raise ConfigError(
                    f"{path} does not exist: create the site's files with "
                    f"`fedllm site init {self.site_dir}`"
                )
        mode = files.superexec_secret.stat().st_mode & 0o777
        if mode & 0o077:
            raise CertificateError(
                f"SuperExec secret {files.superexec_secret} has mode {mode:04o}; it must be 0600"
            )
        return TrustedApps.load(files.trusted_apps)

    def command(self, python: str | None = None, wakeup_fd: int | None = None) -> list[str]:
        """Flower's SuperNode with fedllm's pull loop (:mod:`fedllm.deploy.supernode`); every
        flag after the module is flower-supernode's own, but ``--wakeup-fd`` (the pipe to the
        executor, when both are started together)."""
        return [
            *(python or sys.executable, "-m", SUPERNODE_MODULE),
            *(() if wakeup_fd is None else ("--wakeup-fd", str(wakeup_fd))),
            *("--superlink", self.superlink),
            *("--root-certificates", str(self.ca)),
            *("--auth-supernode-private-key", str(self.node_key)),
            *("--node-config", node_config_arg(self.node_config())),
            *("--port", str(self.port)),
            *("--isolation", "process"),  # only fedllm's executor runs ClientApps
            *("--superexec-auth-secret-file", str(self.files.superexec_secret)),
        ]

    def executor_command(
        self,
        supernode_pid: int | None,
        python: str | None = None,
        wakeup_fd: int | None = None,
    ) -> list[str]:
        """The executor beside the SuperNode (same machine: loopback); ``wakeup_fd``: the
        read end of the pipe the SuperNode writes to when it has a task."""
        command = [python or sys.executable, "-m", EXECUTOR_MODULE]
        command += ["--runtime-api-address", host_port(LOOPBACK, self.port)]
        command += ["--trusted-apps", str(self.files.trusted_apps)]
        command += ["--superexec-auth-secret-file", str(self.files.superexec_secret)]
        command += [] if self.warm else ["--cold"]
        command += [] if wakeup_fd is None else ["--wakeup-fd", str(wakeup_fd)]
        return command + (["--parent-pid", str(supernode_pid)] if supernode_pid else [])


def node_config_arg(values: Mapping[str, str]) -> str:
    """``key="value" ...`` as ``--node-config`` parses it (TOML strings); a value holding a
    quote or a backslash is refused rather than mangled."""
    for key, value in values.items():
        if any(c in value for c in '"\\\n'):
            raise ConfigError(f"node-config `{key}` {value!r} holds a quote or backslash")
    return " ".join(f'{key}="{value}"' for key, value in values.items())


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:8000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) back into its parts; a clear error otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    _check_port(int(port))
    return host.strip("[]") or "0.0.0.0", int(port)


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"port must be in 1..65535, got {port}")
