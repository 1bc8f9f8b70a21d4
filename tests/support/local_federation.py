"""A whole deployment on one machine: a TLS SuperLink with node authentication and N
SuperNodes, each a separate process with its own key, data file and privacy files, all
started with the same command lines as ``fedllm superlink start`` / ``fedllm supernode start``.
Each site's folder is made as a site makes it (``fedllm site init``, ``fedllm site trust``),
and the operator files only its public key (``fedllm certs add-site``).

Test support, not library: for the integration tests and the latency benchmark (and for
trying a deployment before spreading it over machines). Every process starts in its own
process group, so ``close()`` stops it and everything it started, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedllm import deploy
from fedllm.crypto import SiteKey, add_node_public_key
from fedllm.deploy.pinning import trusted_app
from fedllm.secagg import ROSTER_FILE, Roster


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """A started process, its log file and the command that started it."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def send(self, sig: int) -> None:
        """Signals the whole process group (the process and whatever it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.send(sig)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@dataclass
class LocalFederation:
    """``root/`` holds the PKI (``pki/``), the SuperLink state, Flower's home (``flwr/``) and
    the logs. Start the SuperLink with :meth:`start_superlink`, sites with :meth:`start_site`,
    runs with :meth:`run`; :meth:`close` stops everything."""

    root: Path
    prefix: Sequence[str] = ()  # e.g. ("ip", "netns", "exec", NAME) for the SuperLink side
    processes: list[Process] = field(default_factory=list)
    superlink: deploy.SuperLinkSettings | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # for every process it starts

    @property
    def env(self) -> dict[str, str]:
        env = deploy.flower_env()
        env["FLWR_HOME"] = str(self.root / "flwr")
        return env | self.extra_env

    def start(
        self, name: str, command: Sequence[str], prefix: Sequence[str] | None = None
    ) -> Process:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [*(self.prefix if prefix is None else prefix), *command],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_superlink(
        self,
        keys: Sequence[Path],
        port: int,
        host: str = "127.0.0.1",
        timeout: float = 90,
        in_memory: bool = False,
    ) -> Process:
        """``fedllm superlink start`` (the operator's command) registering ``keys``, its gate
        on ``host:port`` and flower-superlink on a free loopback port, its state in
        ``root/superlink-state`` (or in memory); returns once it says it is ready."""
        state = None if in_memory else self.root / "superlink-state"
        self.superlink = deploy.SuperLinkSettings(self.root / "pki", state, host, port, free_port())
        command = [sys.executable, "-m", "fedllm.cli", "superlink", "start", str(self.root / "pki")]
        command += ["--in-memory"] if state is None else ["--state", str(state)]
        command += ["--host", host, "--port", str(port)]
        command += ["--control-port", str(self.superlink.control_port)]
        for key in keys:
            command += ["--register", str(key)]
        process = self.start("superlink", command)
        wait_for(process, "SuperLink ready", timeout)
        return process

    def add_site(
        self, name: str, pinned: Sequence[deploy.FabInfo], max_epsilon: float = 10.0
    ) -> deploy.SiteFiles:
        """``root/sites/<name>/`` as the site makes it (its own keys and secret, its policy,
        ``pinned`` apps trusted), and its ``node.pub`` filed as ``pki/nodes/<name>.pub``."""
        from fedllm.privacy import SitePolicy

        made = deploy.init_site(self.root / "sites" / name, SitePolicy(max_epsilon, 1e-5))
        trusted = deploy.TrustedApps.load(made.files.trusted_apps)
        for fab in pinned:
            trusted = trusted.trust(trusted_app(fab, "pinned by the test"))
        trusted.write(made.files.trusted_apps)
        add_node_public_key(self.root / "pki", name, made.files.node_pub)
        return made.files

    def start_site(self, site: deploy.SiteSettings, prefix: Sequence[str] | None = None) -> Process:
        """``fedllm supernode start`` (the site's command): its SuperNode and, when
        ``site.warm``, its warm executor, in one process group."""
        command = [sys.executable, "-m", "fedllm.cli", "supernode", "start"]
        command += ["--superlink", site.superlink, "--ca", str(site.ca)]
        command += ["--key", str(site.node_key), "--data", str(site.data_path)]
        command += ["--site-dir", str(site.site_dir), "--name", site.name]
        command += ["--port", str(site.port), *(() if site.warm else ("--cold",))]
        return self.start(site.name, command, prefix)

    def start_node(
        self,
        ca: Path,
        node_key: Path,
        data_path: Path,
        site_dir: Path,
        name: str,
        *,
        warm: bool = True,
        prefix: Sequence[str] | None = None,
    ) -> deploy.SiteSettings:
        """A site dialling this federation's SuperLink, on a free port: its settings, once
        :meth:`start_site` has started it."""
        if self.superlink is None:
            raise RuntimeError("start the SuperLink before the sites")
        site = deploy.SiteSettings(
            self.superlink.fleet_address(),
            ca,
            node_key,
            data_path,
            site_dir,
            name,
            port=free_port(),
            warm=warm,
        )
        self.start_site(site, prefix)
        return site

    def run(
        self,
        app: Path,
        run_config: str,
        timeout: float,
        connection: str = deploy.CONNECTION,
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run APP CONNECTION --run-config ... --stream`` until the run ends; its output
        is also kept in ``logs/run-N.log``."""
        result = subprocess.run(
            [
                *self.prefix,
                *(deploy.executable("flwr"), "run", str(app), connection, "--stream"),
                *("--run-config", run_config),
            ],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        runs = len(list((self.root / "logs").glob("run-*.log")))
        (self.root / "logs" / f"run-{runs + 1}.log").write_text(result.stdout + result.stderr)
        return result

    def serverapp_pids(self) -> list[int]:
        """The ServerApps of this federation's SuperLink: ``flwr-serverapp`` processes dialling
        its Runtime API (Flower starts them outside the SuperLink's process group)."""
        assert self.superlink is not None
        runtime = f"127.0.0.1:{self.superlink.control_port}"
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    words = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                except OSError:
                    continue
                if any(w.endswith("flwr-serverapp") for w in words[:2]) and runtime in words:
                    found.append(int(entry.name))
        return found

    def close(self, grace: float = 8.0) -> None:
        """SIGTERM to every process group at once, SIGKILL to what is left after ``grace``."""
        for process in self.processes:
            process.send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            process.kill()


def wait_for(process: Process, text: str, timeout: float) -> None:
    """Until ``text`` appears in the process's log; raises if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while text not in process.text():
        if process.popen.poll() is not None:
            raise deploy.DeployError(
                f"{process.name} exited ({process.popen.returncode}) before {text!r}:\n"
                + process.text()[-3000:]
            )
        if time.monotonic() > deadline:
            raise deploy.DeployError(
                f"{process.name}: no {text!r} after {timeout:.0f} s:\n" + process.text()[-3000:]
            )
        time.sleep(0.2)


def commands(process: Process) -> dict[int, str]:
    """The live processes of ``process``'s group (it and everything it started): pid ->
    command (the module for ``python -m``, else the program's name)."""
    group = os.getpgid(process.popen.pid) if process.popen.poll() is None else process.popen.pid
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(entry.name)) != group:
                continue
            words = [
                w.decode(errors="replace")
                for w in (entry / "cmdline").read_bytes().split(b"\0")
                if w
            ]
            if words:
                found[int(entry.name)] = (
                    words[words.index("-m") + 1] if "-m" in words[:-1] else Path(words[0]).name
                )
    return found


def write_rosters(sites: dict[str, deploy.SiteFiles]) -> None:
    """Each site's secagg-roster.toml: every member's identity key (exchanged out of band)."""
    roster = Roster({n: SiteKey.load(f.site_key).public for n, f in sites.items()})
    for files in sites.values():
        (files.folder / ROSTER_FILE).write_text(roster.to_toml())
