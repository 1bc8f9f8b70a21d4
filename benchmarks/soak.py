"""Soak: a long deployment run that loses a site and its coordinator on the way.

UCI heart disease, one SuperNode per hospital file (cleveland, hungarian, va) over TLS with
node authentication, DP-SGD at epsilon 1 for the whole run (RDP accountant) and secure
aggregation: ``--rounds`` rounds (default 50). On the way:

- one SuperNode (``va``, with its executor and workers) is killed with SIGKILL once round
  ``--kill-site-after`` is recorded and started again ``--site-down`` seconds later (same key,
  same folder, same ledger); the rounds meanwhile go on without it after ``round-timeout``;
- the coordinator (the run's ``flwr-serverapp`` process) is killed with SIGKILL in the middle
  of round ``--kill-coordinator-in`` (after half a round's time, so a round is in flight), and
  the run is resumed with ``resume-from``.

It reports each round's wall time (from metrics.json), the memory (RSS) of every process at the
start (after round 1) and at the end, what each crash cost (rounds in flight, the resumed round,
the rounds a site missed), and that every site's ledger verifies with the run's epsilon within
its target. Results: benchmarks/results/soak.{md,json}. A benchmark, not a test: run it once.

    .venv/bin/python benchmarks/soak.py [--rounds 50] [--data /path/to/heart_disease]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the one-machine deployment the tests also use

from fedllm import deploy  # noqa: E402
from fedllm.crypto import create_deployment  # noqa: E402
from fedllm.errors import FedLLMError  # noqa: E402
from fedllm.privacy import PrivacyLedger, spent  # noqa: E402
from fedllm.privacy.chain import COUNT, TRAIN  # noqa: E402
from tests.support.local_federation import (  # noqa: E402
    LocalFederation,
    Process,
    commands,
    free_port,
    write_rosters,
)

CENTERS = ("cleveland", "hungarian", "va")
DOOMED = "va"
RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.0


def heart_data(given: Path | None) -> Path:
    """The UCI files: ``--data``, else the shared data folder beside the checkout."""
    candidates = [given] if given else [ROOT.parent / "shared", ROOT.parents[1] / "shared"]
    for base in candidates:
        if base is None:
            continue
        folder = base if given else base / "data" / "heart_disease"
        if all((folder / f"processed.{c}.data").is_file() for c in CENTERS):
            return folder
    raise SystemExit(f"soak: needs the UCI heart disease files ({', '.join(CENTERS)})")


def run_config(data: Path, out: Path, rounds: int, timeout: float) -> dict[str, Any]:
    return {
        "task": "heart-disease",
        "data-path": str(data),
        "num-sites": len(CENTERS),
        "partitioner": "natural",
        "min-available-nodes": len(CENTERS),
        "num-server-rounds": rounds,
        "accountant": "rdp",
        "target-epsilon": TARGET,
        "round-timeout": timeout,
        "out-dir": str(out),
        "run-name": "soak",
    }


def memory(local: LocalFederation) -> dict[str, dict[str, float]]:
    """RSS (MB) of every live process of each started group (SuperLink side, each site)."""
    found: dict[str, dict[str, float]] = {}
    for process in local.processes:
        if process.popen.poll() is not None:
            continue
        for pid, name in commands(process).items():
            rss = _rss_mb(pid)
            if rss:
                found.setdefault(process.name, {})[f"{name} ({pid})"] = rss
    return found


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def round_times(rounds: list[dict[str, Any]]) -> list[float]:
    """Each round's wall time from metrics.json's elapsed seconds (a resumed run's clock goes
    on from its checkpoint, so the resumed round holds the restart)."""
    elapsed = [float(r["elapsed-s"]) for r in rounds]
    return elapsed[:1] + [b - a for a, b in itertools.pairwise(elapsed)]


def rounds_done(metrics: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(metrics.read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return []


def start_run(local: LocalFederation, config: dict[str, Any]) -> subprocess.Popen[str]:
    text = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
    command = [deploy.executable("flwr"), "run", str(ROOT), deploy.CONNECTION, "--stream"]
    log = (local.root / "logs" / f"flwr-run-{time.time():.0f}.log").open("w")
    return subprocess.Popen(
        [*command, "--run-config", text],
        env=local.env, cwd=local.root, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def soak(work: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    made = create_deployment(work / "pki", ["localhost", "127.0.0.1"])
    local = LocalFederation(work)
    pinned = deploy.FabInfo.of(deploy.build_fab(ROOT))
    events: list[str] = []
    try:
        sites = {c: local.add_site(c, [pinned]) for c in CENTERS}
        write_rosters(sites)  # SecAgg+ checks every member's signed keys
        local.start_superlink([work / "pki" / "nodes" / f"{c}.pub" for c in CENTERS], free_port())
        nodes: dict[str, Process] = {}

        def start_site(center: str) -> None:
            files = sites[center]
            local.start_node(
                made.ca.cert, files.node_key, data / f"processed.{center}.data", files.folder,
                center,
            )  # fmt: skip
            nodes[center] = local.processes[-1]

        for center in CENTERS:
            start_site(center)
        for center in CENTERS:
            _wait_for(nodes[center], "warm in", 300)
        config = run_config(data, work / "runs", args.rounds, args.round_timeout)
        metrics = work / "runs" / "soak" / "metrics.json"
        started = time.monotonic()
        client = start_run(local, config)
        at_start: dict[str, dict[str, float]] = {}
        killed_site = killed_coordinator = False
        site_back_at: float | None = None
        while True:
            done = rounds_done(metrics)
            last = done[-1]["round"] if done else 0
            if last >= 1 and not at_start:
                at_start = memory(local)
            if not killed_site and last >= args.kill_site_after:
                nodes[DOOMED].kill()
                site_back_at = time.monotonic() + args.site_down
                killed_site = True
                events.append(
                    f"SIGKILL to site {DOOMED} (SuperNode, executor, workers) after round {last}"
                )
            if site_back_at is not None and time.monotonic() >= site_back_at:
                start_site(DOOMED)
                down = f"{args.site_down:.0f} s later, round {last} recorded"
                events.append(f"site {DOOMED} started again ({down})")
                site_back_at = None
            if (
                args.kill_coordinator_in
                and not killed_coordinator
                and last >= args.kill_coordinator_in - 1
            ):
                typical = statistics.median(round_times(done)[1:] or [2.0])
                time.sleep(typical / 2)  # into the next round: one is in flight
                in_flight = (rounds_done(metrics)[-1]["round"] if rounds_done(metrics) else 0) + 1
                pids = local.serverapp_pids()
                if not pids:
                    raise RuntimeError("no ServerApp of this SuperLink to kill")
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                client.kill()
                client.wait()
                killed_coordinator = True
                named = ", ".join(map(str, pids))
                events.append(f"SIGKILL to the ServerApp ({named}) during round {in_flight}")
                resume = {**config, "resume-from": str(work / "runs" / "soak")}
                client = start_run(local, resume)
                events.append("resumed with resume-from")
            if client.poll() is not None:
                break
            time.sleep(0.2)
        wall = time.monotonic() - started
        at_end = memory(local)
        if client.returncode != 0:
            raise RuntimeError(
                f"the soak run failed ({client.returncode}); logs in {work / 'logs'}"
            )
        summary = json.loads(metrics.read_text())
        ledgers = verify_ledgers(sites, summary)
        return {
            "events": events,
            "wall-s": round(wall, 1),
            "summary": summary,
            "memory-start-mb": at_start,
            "memory-end-mb": at_end,
            "ledgers": ledgers,
            "superlink-database-locked": superlink_locked(local),
        }
    finally:
        local.close()


def verify_ledgers(sites: dict[str, deploy.SiteFiles], summary: dict[str, Any]) -> dict[str, Any]:
    """Each site's ledger: chain, signatures and epsilons replayed; the run's entries, rounds
    and epsilon (the run id is the one every entry of the run carries)."""
    out: dict[str, Any] = {}
    planned = set(range(1, int(summary["config"]["num-server-rounds"]) + 1))
    for center, files in sites.items():
        try:
            entries = PrivacyLedger(files.ledger).replay()
        except FedLLMError as err:
            out[center] = {"verifies": False, "error": str(err)}
            continue
        run_ids = sorted({e.run_id for e in entries})  # one: the run before and after resume
        rounds = [e.round for e in entries if e.kind == TRAIN]  # besides count, evaluations
        epsilon = spent(entries, 1e-5, "rdp", run_ids[0]).epsilon() if entries else 0.0
        missed = sorted(planned - set(rounds))
        out[center] = {
            "verifies": True,
            "run-ids": run_ids,
            "entries": len(entries),
            "count-releases": [e.kind for e in entries].count(COUNT),  # once per run
            "rounds-trained-twice": sorted({r for r in rounds if rounds.count(r) > 1}),
            "rounds-missed": missed,
            "why-missed": {str(r): why_missed(summary, center, r) for r in missed},
            "run-epsilon": round(epsilon, 4),
            "within-target": epsilon <= TARGET,
        }
    return out


def why_missed(summary: dict[str, Any], site: str, server_round: int) -> str:
    """What metrics.json says about ``site`` in a round its ledger has no training for: the
    server's record (dropped, refused, rejected, left out), or that it recorded none."""
    entries = [r for r in summary["rounds"] if r["round"] == server_round]
    if not entries:
        return "round not recorded"
    entry = entries[-1]
    for kind in ("dropped", "refused", "left-out"):
        if site in entry.get(kind, {}):
            why = entry[kind][site]
            text = why.get("reason", why) if isinstance(why, dict) else why
            return f"{kind}: {text}"
    for who, why in entry.get("rejected", {}).items():
        if site in who or who in ("secure aggregation", "aggregate"):
            return f"rejected ({who}): {why}"
    if site in entry.get("sites", {}):
        return "trained per the server; no ledger entry"
    return "NO REASON RECORDED"


def superlink_locked(local: LocalFederation) -> int:
    """Lines of the SuperLink's log reporting its state database locked (a busy SQLite)."""
    link = next(p for p in local.processes if p.name == "superlink")
    return link.text().count("database is locked")


def _wait_for(process: Process, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.name}: no {text!r} after {timeout} s")
        time.sleep(0.5)


def report(record: dict[str, Any]) -> str:
    summary = record["result"]["summary"]
    rounds = summary["rounds"]
    times = round_times(rounds)
    steady = sorted(times[1:])
    p90 = steady[int(0.9 * (len(steady) - 1))]
    lines = [
        "# Soak: deployment rounds with a site and the coordinator killed on the way",
        "",
        f"{record['task']}; {record['cpus']} CPUs, load average before "
        f"{record['load-average-before']}, after {record['load-average-after']} (a shared machine; "
        "other jobs ran too).",
        "",
        f"Rounds recorded: {len(rounds)} of {summary['config']['num-server-rounds']} "
        f"(stopped: {summary['final']['stopped']}); wall time {record['result']['wall-s']} s; "
        f"'database is locked' in the SuperLink's log: "
        f"{record['result'].get('superlink-database-locked', '?')} times.",
        "",
        "What happened: " + "; ".join(record["result"]["events"]) + ".",
        "",
        "| round wall time | median | p90 | max | round 1 |",
        "|---|---|---|---|---|",
        f"| seconds | {statistics.median(steady):.2f} | {p90:.2f} | {max(steady):.2f} | "
        f"{times[0]:.2f} |",
        "",
        "Per round (s): "
        + ", ".join(f"{r['round']}: {t:.1f}" for r, t in zip(rounds, times, strict=True)),
        "",
        "| site | ledger verifies | entries | rounds trained twice | rounds missed | run epsilon "
        "(target 1) |",
        "|---|---|---|---|---|---|",
    ]
    for center, ledger in record["result"]["ledgers"].items():
        if not ledger["verifies"]:
            lines.append(f"| {center} | NO: {ledger['error']} | | | | |")
            continue
        lines.append(
            f"| {center} | {'yes' if ledger['verifies'] else 'NO'} | {ledger['entries']} | "
            f"{ledger['rounds-trained-twice'] or '-'} | {ledger['rounds-missed'] or '-'} | "
            f"{ledger['run-epsilon']:.4f} |"
        )
    reasons = [
        f"- {center}, round {r}: {why}"
        for center, ledger in record["result"]["ledgers"].items()
        for r, why in ledger.get("why-missed", {}).items()
    ]
    if reasons:
        lines += ["", "Why each missed round was missed (the server's record in metrics.json):"]
        lines += ["", *reasons]
    lines += [
        "",
        "| process group | process | RSS at start (MB) | RSS at end (MB) |",
        "|---|---|---|---|",
    ]
    start, end = record["result"]["memory-start-mb"], record["result"]["memory-end-mb"]
    for group in sorted(set(start) | set(end)):
        for name in sorted(set(start.get(group, {})) | set(end.get(group, {}))):
            before = start.get(group, {}).get(name)
            after = end.get(group, {}).get(name)
            lines.append(
                f"| {group} | {name} | {before if before is not None else '-'} | "
                f"{after if after is not None else '-'} |"
            )
    lines += ["", "Made by `.venv/bin/python benchmarks/soak.py`.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--kill-site-after", type=int, default=15)
    parser.add_argument("--site-down", type=float, default=20.0)
    parser.add_argument(
        "--kill-coordinator-in", type=int, default=30, help="0: the coordinator is not killed"
    )
    parser.add_argument("--round-timeout", type=float, default=20.0)
    parser.add_argument("--data", type=Path)
    parser.add_argument(
        "--keep", type=Path, help="run in this (new) folder and keep it: logs, metrics.json"
    )
    parser.add_argument(
        "--no-results", action="store_true", help="print the report; leave results/ as it is"
    )
    args = parser.parse_args()
    source = heart_data(args.data)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedllm-soak-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep.resolve()
        data = work / "heart"
        data.mkdir(parents=True)  # a kept folder must be new: one run's files only
        for center in CENTERS:
            shutil.copy(source / f"processed.{center}.data", data)
        result = soak(work / "federation", data, args)
    record = {
        "task": f"heart-disease (UCI: {', '.join(CENTERS)}; one SuperNode per file), TLS, node "
        "auth, DP at epsilon 1 (RDP), secure aggregation",
        "cpus": os.cpu_count(),
        "load-average-before": [round(x, 2) for x in load_before],
        "load-average-after": [round(x, 2) for x in os.getloadavg()],
        "result": result,
    }
    text = report(record)
    if not args.no_results:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps(record, indent=2) + "\n")
        (RESULTS / "soak.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
