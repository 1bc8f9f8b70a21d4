"""``fedllm superlink start`` (the operator) and ``fedllm supernode start`` (a site): one command
each that checks its files, starts the real Flower processes with fedllm's flags
(:mod:`fedllm.deploy.settings`) beside fedllm's own (the gate on the SuperLink's public
address, the executor beside a SuperNode) and stops them together on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from fedllm import deploy
from fedllm.crypto import check_node_public_key
from fedllm.deploy.settings import host_port


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    link = commands.add_parser("superlink", help="the operator's SuperLink").add_subparsers(
        dest="superlink_command", required=True
    )
    start = link.add_parser(
        "start",
        help="start flower-superlink on loopback (TLS, node authentication, state database), "
        "the gate that serves only its Fleet API on the public address, and register the "
        "sites' node keys",
    )
    start.add_argument("pki", type=Path, metavar="PKI", help="the folder `fedllm certs init` made")
    state = start.add_mutually_exclusive_group(required=True)
    state.add_argument(
        "--state", type=Path, help="folder of the state database (runs, registered keys; keep it)"
    )
    state.add_argument(
        "--in-memory",
        action="store_true",
        help="keep the SuperLink's state in memory (faster rounds; a restart forgets runs and "
        "node ids, the keys are registered again, every SuperNode activates again)",
    )
    start.add_argument(
        "--host", default="127.0.0.1", help="public listen address (0.0.0.0: all interfaces)"
    )
    start.add_argument(
        "--port",
        type=int,
        default=deploy.SUPERLINK_PORT,
        help="public port: SuperNodes dial it (the Fleet API only)",
    )
    start.add_argument(
        "--control-port",
        type=int,
        default=deploy.CONTROL_PORT,
        help="flower-superlink's own port on 127.0.0.1: the Flower CLI (flwr run, flwr "
        f"supernode ...) on this machine dials it (default {deploy.CONTROL_PORT})",
    )
    start.add_argument(
        "--register",
        type=Path,
        action="append",
        metavar="KEY.pub",
        help="a site's public key to register (repeatable; default: every PKI/nodes/*.pub)",
    )
    start.add_argument(
        "--connection",
        default=deploy.CONNECTION,
        help="name of the [superlink.NAME] entry written to $FLWR_HOME/config.toml "
        f"(default {deploy.CONNECTION}; `flwr run . NAME`)",
    )
    start.set_defaults(run=_superlink_start)

    node = commands.add_parser("supernode", help="a site's SuperNode").add_subparsers(
        dest="supernode_command", required=True
    )
    start = node.add_parser(
        "start",
        help="start the SuperNode (flower-supernode with fedllm's prompt pull loop) and the "
        "executor that runs only the apps this site pinned, with the site's key, data and "
        "privacy files",
    )
    start.add_argument("--superlink", required=True, metavar="HOST:PORT")
    start.add_argument("--ca", type=Path, required=True, help="the CA certificate (ca.crt)")
    start.add_argument(
        "--site-dir", type=Path, required=True, help="the folder `fedllm site init` made"
    )
    start.add_argument("--key", type=Path, help="this site's node key (default: SITE_DIR/node.key)")
    start.add_argument("--data", type=Path, required=True, help="this site's data file")
    start.add_argument("--name", required=True, help="the site's name in metrics and logs")
    start.add_argument(
        "--port", type=int, default=deploy.SUPERNODE_PORT, help="its ClientApp Runtime API port"
    )
    start.add_argument(
        "--cold",
        action="store_true",
        help="the executor preloads nothing: each task imports torch itself (slower, less memory)",
    )
    start.set_defaults(run=_supernode_start)


def _superlink_start(args: argparse.Namespace) -> int:
    state_dir = None if args.in_memory else args.state.resolve()
    settings = deploy.SuperLinkSettings(
        args.pki.resolve(), state_dir, args.host, args.port, args.control_port
    )
    settings.check()
    keys = [k.resolve() for k in args.register] if args.register else None
    if keys is None:
        keys = sorted((settings.pki / "nodes").glob("*.pub"))
    for key in keys:
        check_node_public_key(key)
    if settings.state_dir is not None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    env = deploy.flower_env()
    flwr_home = Path(env.get("FLWR_HOME", Path.home() / ".flwr"))
    env["FLWR_HOME"] = os.environ["FLWR_HOME"] = str(flwr_home)
    proc = subprocess.Popen(settings.command(deploy.executable("flower-superlink")), env=env)
    procs = [proc]
    with _stopping(procs):
        deploy.wait_listening(deploy.LOOPBACK, settings.control_port, proc, 60, None)
        gate = subprocess.Popen(settings.gate_command(), env=env)
        procs.append(gate)
        deploy.wait_listening(settings.dial_host, settings.port, gate, 60, None)
        path = deploy.write_connection(flwr_home, args.connection, settings.address(), settings.ca)
        print(f"fedllm: connection [superlink.{args.connection}] written to {path}", flush=True)
        for key, line in zip(keys, deploy.register_nodes(keys, args.connection), strict=True):
            print(f"fedllm: {line} ({check_node_public_key(key)})", flush=True)
        print(
            f"fedllm: SuperLink ready: SuperNodes dial {host_port(args.host, args.port)} (the "
            f"Fleet API only); the Control API is on {settings.address()}, this machine only; "
            f"start a run here with `flwr run . {args.connection} --stream`",
            flush=True,
        )
        return _wait(procs)


def _supernode_start(args: argparse.Namespace) -> int:
    site_dir = args.site_dir.resolve()
    key = args.key.resolve() if args.key else deploy.SiteFiles(site_dir).node_key
    settings = deploy.SiteSettings(
        args.superlink,
        args.ca.resolve(),
        key,
        args.data.resolve(),
        site_dir,
        args.name,
        args.port,
        warm=not args.cold,
    )
    trusted = settings.check()
    pinned = trusted.summary() if trusted.apps else ""
    print(
        f"fedllm: site {args.name} runs only the apps pinned in {settings.files.trusted_apps}: "
        + (pinned or "none yet, so every run is refused (fedllm site trust)"),
        flush=True,
    )
    env = deploy.flower_env()
    # The SuperNode wakes the executor through this pipe when it has stored a task.
    wake_read, wake_write = os.pipe()
    node = subprocess.Popen(settings.command(wakeup_fd=wake_write), env=env, pass_fds=(wake_write,))
    procs = [node]
    with _stopping(procs):
        executor = settings.executor_command(node.pid, wakeup_fd=wake_read)
        procs.append(subprocess.Popen(executor, env=env, pass_fds=(wake_read,)))
        os.close(wake_read)
        os.close(wake_write)
        return _wait(procs)


@contextlib.contextmanager
def _stopping(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Stops every process on leaving, also on Ctrl-C or SIGTERM (which end the wait)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        deploy.stop(procs)


def _wait(procs: list[subprocess.Popen[bytes]]) -> int:
    """Until any process exits (then the others are stopped) or Ctrl-C."""
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    ended = next(p for p in procs if p.returncode is not None)
    name = os.path.basename(str(ended.args[0]))  # type: ignore[index]
    print(f"fedllm: {name} exited ({ended.returncode}); stopping", file=sys.stderr)
    return int(ended.returncode) or 1
