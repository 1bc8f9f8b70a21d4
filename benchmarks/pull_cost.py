"""What sites asking for work cost the SuperLink: ``--sites`` authenticated SuperNode
connections (Flower's own Fleet client, each with its node key registered and its heartbeat
thread) against a real SuperLink started by ``fedllm superlink start`` (flower-superlink on
loopback behind fedllm's TLS gate), each pulling on its own thread as fedllm's SuperNode
does (:class:`fedllm.deploy.polling.Backoff`: ``pull_loop``'s wait after an empty pull).

Phases, one after the other, on the same SuperLink and connections:

- ``heartbeats``: connections open, no pulls (what any connected SuperNode costs);
- ``idle``: every site idle for long (its wait is ``slowest``, 3 s: Flower's fixed sleep);
- ``after-message``: every site saw a message at the phase's start (the wait starts at
  ``fastest``, 0.1 s, and grows 10 % of the idle time to 3 s): what one message stage of a
  run to every site costs in the ``--after`` seconds that follow.

For each phase: the pulls made (and the rate the schedule asked for), the CPU seconds of the
SuperLink's processes (flower-superlink and the gate, from /proc), CPU per pull, and the share
of one core. Results: benchmarks/results/pull_cost.{md,json}. A benchmark: run it once.

    .venv/bin/python benchmarks/pull_cost.py [--sites 100] [--idle 60] [--after 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the one-machine deployment the tests also use

from cryptography.hazmat.primitives import serialization  # noqa: E402

from fedllm.crypto import create_deployment, create_node_keys  # noqa: E402
from fedllm.deploy.polling import Backoff  # noqa: E402
from tests.support.local_federation import LocalFederation, commands, free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (their own, not their children's)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICK


class Sites:
    """``n`` authenticated Fleet connections, each with a pulling thread when asked."""

    def __init__(self, address: str, ca: Path, keys: list[Path]) -> None:
        from flwr.supernode.start_client_internal import _init_connection

        self.stack = contextlib.ExitStack()
        self.receives = []
        for key in keys:
            private = serialization.load_ssh_private_key(key.read_bytes(), None)
            pair = (private, private.public_key())
            conn = self.stack.enter_context(
                _init_connection(address, False, str(ca), pair)  # type: ignore[arg-type]
            )
            self.receives.append(conn[1])
        self.pulls = 0
        self.planned = 0.0
        self.lock = threading.Lock()

    def pull(self, seconds: float, backoff: Backoff, idle_before: float) -> None:
        """Every site pulls for ``seconds`` as if its last message was ``idle_before`` ago."""
        self.pulls, self.planned = (
            0,
            len(self.receives)
            * (backoff.requests(idle_before + seconds) - backoff.requests(idle_before)),
        )
        end = time.monotonic() + seconds
        start = time.monotonic()

        def loop(receive: Any, offset: float) -> None:
            time.sleep(offset)  # spread the sites as their independent starts would
            while time.monotonic() < end:
                receive()
                with self.lock:
                    self.pulls += 1
                idle = idle_before + time.monotonic() - start
                time.sleep(max(0.0, min(backoff.wait(idle), end - time.monotonic())))

        n = len(self.receives)
        spread = backoff.wait(idle_before)
        threads = [
            threading.Thread(target=loop, args=(r, spread * i / n), daemon=True)
            for i, r in enumerate(self.receives)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def measure(pids: list[int], seconds: float, work: Any) -> dict[str, float]:
    before, mine, wall = cpu_seconds(pids), time.process_time(), time.monotonic()
    work(seconds)
    wall = time.monotonic() - wall
    used = cpu_seconds(pids) - before
    return {
        "seconds": round(wall, 1),
        "superlink-cpu-s": round(used, 2),
        "superlink-core-share": round(used / wall, 3),
        "client-cpu-s": round(time.process_time() - mine, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--heartbeats", type=float, default=30.0)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--after", type=float, default=30.0)
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    backoff = Backoff()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedllm-pull-cost-") as tmp:
        root = Path(tmp)
        create_deployment(root / "pki", ["localhost", "127.0.0.1"])
        names = [f"site-{i:03d}" for i in range(args.sites)]
        made = create_node_keys(root / "pki" / "nodes", names)
        local = LocalFederation(root)
        try:
            local.start_superlink([m.pub for m in made], free_port(), timeout=180)
            superlink = next(p for p in local.processes if p.name == "superlink")
            group = commands(superlink)
            pids = list(group)  # the supervising fedllm.cli, flower-superlink, the gate
            assert local.superlink is not None
            address = local.superlink.fleet_address()
            opened = time.monotonic()
            sites = Sites(address, root / "pki" / "ca.crt", [m.key for m in made])
            connect_s = time.monotonic() - opened
            phases: dict[str, Any] = {}
            phases["heartbeats"] = measure(pids, args.heartbeats, time.sleep)
            phases["heartbeats"]["pulls"] = 0
            for name, seconds, idle_before in (
                ("idle", args.idle, 1e6),
                ("after-message", args.after, 0.0),
            ):
                result = measure(pids, seconds, lambda s, i=idle_before: sites.pull(s, backoff, i))
                result["pulls"] = sites.pulls
                result["pulls-planned"] = round(sites.planned)
                result["pulls-per-s"] = round(sites.pulls / result["seconds"], 1)
                base = phases["heartbeats"]["superlink-core-share"] * result["seconds"]
                extra = result["superlink-cpu-s"] - base
                result["superlink-cpu-ms-per-pull"] = round(1000 * extra / max(1, sites.pulls), 2)
                phases[name] = result
            sites.stack.close()
        finally:
            local.close()
    record = {
        "sites": args.sites,
        "backoff": {
            "fastest": backoff.fastest,
            "slowest": backoff.slowest,
            "growth": backoff.growth,
        },
        "superlink-processes": sorted(set(group.values())),
        "connect-s": round(connect_s, 1),
        "phases": phases,
        "machine": {
            "cpus": os.cpu_count(),
            "load-before": load_before,
            "load-after": os.getloadavg(),
        },
        "note": args.note,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pull_cost.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "pull_cost.md").write_text(report(record))
    print(report(record))


def report(record: dict[str, Any]) -> str:
    lines = [
        f"# Pull cost: {record['sites']} sites against one SuperLink",
        "",
        f"SuperLink processes measured: {', '.join(record['superlink-processes'])}; "
        f"{record['machine']['cpus']} CPUs, load {record['machine']['load-before'][0]:.1f} "
        f"before, {record['machine']['load-after'][0]:.1f} after. {record['note']}",
        "",
        "| phase | seconds | pulls (planned) | pulls/s | SuperLink CPU s | share of a core "
        "| CPU ms per pull (above heartbeats) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in record["phases"].items():
        planned = f" ({r['pulls-planned']})" if "pulls-planned" in r else ""
        lines.append(
            f"| {name} | {r['seconds']} | {r['pulls']}{planned} | {r.get('pulls-per-s', 0)} "
            f"| {r['superlink-cpu-s']} | {r['superlink-core-share']} "
            f"| {r.get('superlink-cpu-ms-per-pull', '')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
