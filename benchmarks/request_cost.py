"""What one Fleet API request costs, and where: a probe, not a benchmark for the README.

A SuperLink as ``fedllm superlink start`` runs it (flower-superlink on loopback with TLS and
node authentication, fedllm's gate on the public port) and two authenticated SuperNode
connections (Flower's own Fleet client and node keys): one through the gate, one straight to
flower-superlink's loopback port. Each asks ``--requests`` times in a row for a message (an
empty ``PullMessages``: node-key signature, its check at the SuperLink, a write transaction
on its state) and sends as many heartbeats; the wall time per request, and the CPU seconds of
flower-superlink, the gate and this client per request (from /proc). Once with the state in
the SQLite file (``--database state.db``, as deployed) and once in memory
(``:flwr-in-memory:``). The signature alone (ECDSA P-384 sign and verify, as Flower does per
request) is timed in this process.

    .venv/bin/python benchmarks/request_cost.py [--requests 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from fedllm import deploy  # noqa: E402
from fedllm.crypto import create_deployment, create_node_keys  # noqa: E402
from tests.support.local_federation import free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    return 0.0


def signature_ms(key: Path, n: int = 200) -> dict[str, float]:
    from flwr.supercore.primitives.asymmetric import sign_message, verify_signature

    private = serialization.load_ssh_private_key(key.read_bytes(), None)
    public = private.public_key()
    data = b"2026-11-30T07:00:00.000000+00:00"
    started = time.perf_counter()
    for _ in range(n):
        signature = sign_message(private, data)  # type: ignore[arg-type]
    signed = time.perf_counter()
    for _ in range(n):
        verify_signature(public, data, signature)  # type: ignore[arg-type]
    verified = time.perf_counter()
    return {
        "sign-ms": round(1000 * (signed - started) / n, 3),
        "verify-ms": round(1000 * (verified - signed) / n, 3),
    }


def timed(calls: Any, n: int, pids: dict[str, int]) -> dict[str, float]:
    before = {name: cpu(pid) for name, pid in pids.items()}
    mine = time.process_time()
    walls = []
    for _ in range(n):
        started = time.perf_counter()
        calls()
        walls.append(time.perf_counter() - started)
    result = {
        "wall-ms-median": round(1000 * statistics.median(walls), 2),
        "wall-ms-mean": round(1000 * statistics.mean(walls), 2),
        "client-cpu-ms": round(1000 * (time.process_time() - mine) / n, 2),
    }
    for name, pid in pids.items():
        result[f"{name}-cpu-ms"] = round(1000 * (cpu(pid) - before[name]) / n, 2)
    return result


def one_database(root: Path, database: str, n: int) -> dict[str, Any]:
    from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest
    from flwr.supernode.start_client_internal import _init_connection

    settings = deploy.SuperLinkSettings(root / "pki", root / "state", port=free_port(),
                                        control_port=free_port())  # fmt: skip
    settings.state_dir.mkdir(exist_ok=True)
    command = settings.command(deploy.executable("flower-superlink"))
    command[command.index("--database") + 1] = database
    env = deploy.flower_env() | {"FLWR_HOME": str(root / "flwr")}
    os.environ["FLWR_HOME"] = env["FLWR_HOME"]
    log = (root / f"superlink-{len(list(root.glob('superlink-*')))}.log").open("wb")
    link = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    procs = [link]
    try:
        deploy.wait_listening(deploy.LOOPBACK, settings.control_port, link, 60, None)
        gate = subprocess.Popen(settings.gate_command(), env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(gate)
        deploy.wait_listening(deploy.LOOPBACK, settings.port, gate, 60, None)
        deploy.write_connection(root / "flwr", "probe", settings.address(), settings.ca)
        keys = [root / "pki" / "nodes" / f"{name}.pub" for name in ("via-gate", "direct")]
        deploy.register_nodes(keys, "probe")
        pids = {"superlink": link.pid, "gate": gate.pid}
        result: dict[str, Any] = {}
        for name, address in (("via-gate", settings.fleet_address()),
                              ("direct", settings.address())):  # fmt: skip
            private = serialization.load_ssh_private_key(
                (root / "pki" / "nodes" / f"{name}.key").read_bytes(), None
            )
            pair = (private, private.public_key())
            with _init_connection(address, False, str(settings.ca), pair) as conn:  # type: ignore[arg-type]
                node_id, receive = conn[0], conn[1]
                for _ in range(10):  # warm the connection
                    receive()
                result[f"{name} pull-messages"] = timed(receive, n, pids)
                from flwr.proto.node_pb2 import Node

                beat = SendNodeHeartbeatRequest(node=Node(node_id=node_id), heartbeat_interval=30)
                result[f"{name} heartbeat"] = _heartbeats(conn, beat, n, pids)
        return result
    finally:
        deploy.stop(procs)
        log.close()


def _heartbeats(conn: Any, beat: Any, n: int, pids: dict[str, int]) -> dict[str, float]:
    """The heartbeat through the connection's own authenticated client (found on Flower's
    heartbeat closure)."""
    receive = conn[1]
    client = next(
        cell.cell_contents
        for cell in (receive.__closure__ or ())
        if type(cell.cell_contents).__name__ == "FleetHttpClient"
    )
    return timed(lambda: client.SendNodeHeartbeat(beat), n, pids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedllm-request-cost-") as tmp:
        root = Path(tmp)
        create_deployment(root / "pki", ["localhost", "127.0.0.1"])
        made = create_node_keys(root / "pki" / "nodes", ["via-gate", "direct"])
        record: dict[str, Any] = {"signature": signature_ms(made[0].key)}
        for label, database in (("sqlite-file", str(root / "state" / "state.db")),
                                ("in-memory", ":flwr-in-memory:")):  # fmt: skip
            record[label] = one_database(root, database, args.requests)
    record["load"] = {"before": load_before, "after": os.getloadavg()}
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
