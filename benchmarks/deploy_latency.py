"""Per-round wall time in deployment mode vs simulation, same task, same sites, one run.

Three runs of the same federation (UCI heart disease, one site per hospital file: cleveland,
hungarian, va; DP-SGD at epsilon 1, RDP accountant, secure aggregation; the server's central
evaluation every round and, under DP by default, no site evaluation: `site-evaluations = 0`):

1. simulation: ``fedllm simulate`` (Flower's simulation engine, Ray, one process);
2. deployment, cold: a TLS SuperLink with node authentication and three SuperNodes as
   separate processes (``fedllm supernode start --cold``: a fresh process per message that
   imports torch and the app itself, as Flower's default isolation, a ``flwr-clientapp`` per
   message, did before app pinning ruled it out);
3. deployment, warm: ``fedllm supernode start`` (fedllm's SuperNode with its prompt pull
   loop, the warm executor, one worker process per run keeping the app, the site's data and
   its verified ledger loaded), the SuperLink's state in its SQLite file;
4. deployment, warm, state in memory: the same with ``fedllm superlink start --in-memory``
   (Flower's in-memory link state and object store).

The ServerApp writes each round's elapsed time into metrics.json; a round's wall time is the
difference between consecutive rounds (round 1 also pays one-off costs: noise calibration,
first imports, secure aggregation's setup, so the steady state is the mean over rounds 2..R).
From the warm run's site logs it also reports where a steady round's time goes (per message:
the site's wait for it, its pull, the task, the reply), and after the run a probe app measures
how long a message waits before each site's executor has it. The previous results file is read
first and shown beside the new numbers. Results: benchmarks/results/deploy_latency.{md,json};
the machine's load is recorded with them (on a shared machine they move between runs).

    .venv/bin/python benchmarks/deploy_latency.py [--rounds 4] [--data DIR] [--modes ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the one-machine deployment the tests also use

from fedllm import deploy  # noqa: E402
from fedllm.crypto import create_deployment  # noqa: E402
from tests.support.local_federation import (  # noqa: E402
    LocalFederation,
    free_port,
    write_rosters,
)
from tests.support.probe_app import (  # noqa: E402
    handed_over,
    node_id,
    sent_times,
    write_probe_app,
)

CENTERS = ("cleveland", "hungarian", "va")
RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("simulation", "deployment-cold", "deployment-warm", "deployment-warm-memory")
GOAL_S = 1.5  # issue 18: deployment steady round <= simulation + 1.5 s


def heart_data(given: Path | None) -> Path:
    """The UCI files: ``--data``, else the shared data folder beside the checkout (a worktree
    sits one level deeper than the main checkout)."""
    candidates = [given] if given else [
        ROOT.parent / "shared" / "data" / "heart_disease",
        ROOT.parents[1] / "shared" / "data" / "heart_disease",
    ]  # fmt: skip
    for folder in candidates:
        if folder is not None and all((folder / f"processed.{c}.data").is_file() for c in CENTERS):
            return folder
    raise SystemExit(f"deploy_latency: needs the UCI heart disease files ({', '.join(CENTERS)})")


def config(data: Path, out: Path, name: str, rounds: int) -> dict[str, Any]:
    return {
        "task": "heart-disease",
        "data-path": str(data),
        "num-sites": len(CENTERS),
        "partitioner": "natural",
        "min-available-nodes": len(CENTERS),
        "num-server-rounds": rounds,
        "accountant": "rdp",
        "out-dir": str(out),
        "run-name": name,
    }


def round_times(metrics: Path) -> list[float]:
    """Wall seconds of each round, from the ServerApp's elapsed time per round."""
    rounds = json.loads(metrics.read_text())["rounds"]
    elapsed = [float(r["elapsed-s"]) for r in rounds]
    return [elapsed[0]] + [b - a for a, b in itertools.pairwise(elapsed)]


def simulate(work: Path, data: Path, rounds: int) -> list[float]:
    overrides = config(data, work / "runs", "simulation", rounds)
    command = [sys.executable, "-m", "fedllm.cli", "simulate"]
    for key, value in overrides.items():
        command += ["-c", f"{key}={json.dumps(value)}"]
    env = deploy.flower_env()
    env.update({"FLWR_HOME": str(work / "flwr-sim"), "RAY_TMPDIR": str(work / "ray")})
    # On a loaded machine Ray's raylet sometimes dies at start-up ("Timed out waiting for file
    # .../metrics_agent_port") and the driver then waits forever: bound it, retry once.
    for attempt in (1, 2):
        name = f"simulation-{attempt}"
        command[command.index("-c", command.index("simulate")) :] = [
            part
            for key, value in {**overrides, "run-name": name}.items()
            for part in ("-c", f"{key}={json.dumps(value)}")
        ]
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            output = proc.communicate(timeout=900)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
            proc.wait()
            print(f"simulation attempt {attempt} timed out (Ray start-up?)", file=sys.stderr)
            continue
        if proc.returncode == 0:
            return round_times(work / "runs" / name / "metrics.json")
        print(f"simulation attempt {attempt} failed:\n{output[-2000:]}", file=sys.stderr)
    raise RuntimeError("simulation failed twice")


def deployed(
    work: Path, data: Path, rounds: int, warm: bool, in_memory: bool = False
) -> dict[str, Any]:
    name = ("warm" if warm else "cold") + ("-memory" if in_memory else "")
    root = work / name
    root.mkdir()
    made = create_deployment(root / "pki", ["localhost", "127.0.0.1"])
    local = LocalFederation(root)
    pinned = deploy.FabInfo.of(deploy.build_fab(ROOT))  # the app every site trusts
    try:
        sites = {c: local.add_site(c, [pinned]) for c in CENTERS}  # keys made at the sites
        write_rosters(sites)  # SecAgg+ checks every member's signed keys
        keys = [root / "pki" / "nodes" / f"{c}.pub" for c in CENTERS]
        local.start_superlink(keys, free_port(), in_memory=in_memory)
        for center, files in sites.items():
            local.start_node(
                made.ca.cert, files.node_key, data / f"processed.{center}.data", files.folder,
                center, warm=warm,
            )  # fmt: skip
        if warm:  # the executors import torch once, before the run, as a real site would
            for process in local.processes:
                if process.name in CENTERS:
                    _wait_for(process.log, "warm in", 300)
        run_config = config(data, root / "runs", name, rounds)
        text = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        done = local.run(ROOT, text, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{name} deployment failed:\n{done.stdout[-3000:]}")
        run_id = _run_id(done.stdout + done.stderr)
        logs = {p.name: p.text() for p in local.processes if p.name in CENTERS}
        measured: dict[str, Any] = {"times": round_times(root / "runs" / name / "metrics.json")}
        if warm:
            measured["where"] = where_time_goes(logs, run_id)
            measured["pickup"] = pickup_delays(local, root)
        link = next(p for p in local.processes if p.name == "superlink")
        measured["superlink-database-locked"] = link.text().count("database is locked")
    finally:
        local.close()
    return measured


def _run_id(output: str) -> str:
    found = re.search(r"Successfully started run (\d+)", output)
    return found.group(1) if found else ""


SUPERNODE_LINE = re.compile(
    r"fedllm: run (\d+): a message ([0-9.]+) s after the last reply, pulled and stored in "
    r"([0-9.]+) s, answered and sent in ([0-9.]+) s \(requests: ([^()]*(?:\([^()]*\)[^()]*)*)\)"
)
REQUEST = re.compile(r"([a-z-]+) (\d+)x ([0-9.]+) s")
WORKER_LINE = re.compile(r"fedllm\.deploy\.worker: run (\d+): task done in ([0-9.]+) s \((.*)\)")


def where_time_goes(logs: dict[str, str], run_id: str) -> dict[str, dict[str, float]]:
    """Per message type, means over the sites and the steady rounds (each type's first message
    at a site, round 1's, left out): the site's wait since its last reply (the other sites and
    the server), its pull of the message, the task (of it the ClientApp's handler) and the
    reply's way back to the SuperLink."""
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for log in logs.values():
        pulls = [m for m in SUPERNODE_LINE.findall(log) if m[0] == run_id]
        tasks = [m for m in WORKER_LINE.findall(log) if m[0] == run_id]
        seen: set[str] = set()
        for (_, gap, pulled, answered, asked), (_, total, laps) in zip(pulls, tasks, strict=False):
            parts = dict(
                (name, float(value))
                for name, value in (lap.rsplit(" ", 1) for lap in laps.split(", "))
            )
            stage = next((k for k in parts if k not in ("pull", "app", "reply")), "refused")
            if stage not in seen:  # round 1's
                seen.add(stage)
                continue
            requests = {kind: (int(n), float(t)) for kind, n, t in REQUEST.findall(asked)}
            rows[stage].append(
                {
                    "wait-s": float(gap),
                    "pull-s": float(pulled),
                    "task-s": float(total),
                    "handler-s": parts[stage],
                    "reply-s": float(answered) - float(total),
                    "requests": sum(n for n, _ in requests.values()),
                }
                | {f"{kind}-n": n for kind, (n, _) in requests.items()}
                | {f"{kind}-ms": 1000 * t / n for kind, (n, t) in requests.items() if n}
            )
    return {
        stage: {k: round(statistics.mean(r.get(k, 0) for r in found), 3) for k in found[0]}
        | {"messages": len(found)}
        for stage, found in rows.items()
    }


def pickup_delays(local: LocalFederation, root: Path) -> dict[str, list[float]]:
    """Seconds from a message's push until each site's executor has it (a probe app that no
    site runs: its tasks are refused at once), five messages a second apart."""
    app = write_probe_app(root / "probe")
    done = local.run(app, f"probes=5 gap=1.0 nodes={len(CENTERS)}", timeout=300)
    output = done.stdout + done.stderr
    run_id, sent = _run_id(output), sent_times(output)
    delays = {}
    for process in local.processes:
        if process.name in CENTERS:
            log = process.text()
            pushed, taken = sent.get(node_id(log), []), handed_over(log, run_id)
            delays[process.name] = [
                round(b - a, 3) for a, b in zip(pushed[1:], taken[1:], strict=False)
            ]
    return delays


def _wait_for(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log}: no {text!r} after {timeout} s")
        time.sleep(0.5)


def summary(times: list[float]) -> dict[str, Any]:
    steady = times[1:] or times
    return {
        "rounds-s": [round(t, 2) for t in times],
        "round-1-s": round(times[0], 2),
        "steady-mean-s": round(statistics.mean(steady), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", type=Path, help="the UCI heart disease folder")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--keep", type=Path, help="keep the processes' logs in this folder")
    args = parser.parse_args()
    source = heart_data(args.data)
    previous_file = RESULTS / "deploy_latency.json"
    previous = json.loads(previous_file.read_text()) if previous_file.exists() else None
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedllm-deploy-latency-") as tmp:
        work = Path(tmp)
        data = work / "heart"
        data.mkdir()
        for center in CENTERS:  # one file per site; the server's held-out rows are the same
            shutil.copy(source / f"processed.{center}.data", data)
        results: dict[str, dict[str, Any]] = {}
        measures = {
            "simulation": lambda: {"times": simulate(work, data, args.rounds)},
            "deployment-cold": lambda: deployed(work, data, args.rounds, warm=False),
            "deployment-warm": lambda: deployed(work, data, args.rounds, warm=True),
            "deployment-warm-memory": lambda: deployed(
                work, data, args.rounds, warm=True, in_memory=True
            ),
        }
        for label in args.modes:
            started = time.monotonic()
            measured = measures[label]()
            results[label] = summary(measured.pop("times")) | measured
            print(f"{label}: {results[label]} ({time.monotonic() - started:.0f} s)", flush=True)
        if args.keep:
            for logs in work.glob("*/logs"):
                shutil.copytree(logs, args.keep / logs.parent.name, dirs_exist_ok=True)
    load_after = os.getloadavg()
    sim = results.get("simulation", {}).get("steady-mean-s")
    for label in results:
        if sim and label != "simulation":
            steady = results[label]["steady-mean-s"]
            results[label]["ratio-to-simulation"] = round(steady / sim, 2)
            results[label]["overhead-per-round-s"] = round(steady - sim, 2)
    record = {
        "task": "heart-disease (UCI: cleveland, hungarian, va; one SuperNode per file)",
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load-average-before": [round(x, 2) for x in load_before],
        "load-average-after": [round(x, 2) for x in load_after],
        "results": results,
        "note": args.note,
        "previous": previous,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy_latency.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "deploy_latency.md").write_text(_markdown(record))
    print(_markdown(record))
    return 0


def _markdown(record: dict[str, Any]) -> str:
    before = (record.get("previous") or {}).get("results", {})
    rows = [
        "| mode | round 1 | steady round (mean of 2..R) | / simulation | overhead per round | "
        "steady round before (previous results file) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in record["results"].items():
        ratio = r.get("ratio-to-simulation", 1.0)
        overhead = r.get("overhead-per-round-s", 0.0)
        old = before.get(label, {}).get("steady-mean-s")
        rows.append(
            f"| {label} | {r['round-1-s']:.1f} s | {r['steady-mean-s']:.1f} s | "
            f"{ratio:.2f}x | {overhead:+.1f} s | {f'{old:.1f} s' if old else '-'} |"
        )
    text = (
        "# Deployment round latency\n\n"
        f"{record['task']}, {record['rounds']} rounds, DP at epsilon 1 (RDP), secure "
        "aggregation, the server's central evaluation every round (no site evaluation: "
        "`site-evaluations = 0` under DP); "
        f"{record['cpus']} CPUs, load average before "
        f"{record['load-average-before']}, after {record['load-average-after']} (a shared "
        f"machine: other jobs ran too). {record.get('note', '')}\n\n" + "\n".join(rows) + "\n\n"
        "Per-round rounds (s): "
        + "; ".join(f"{k} {v['rounds-s']}" for k, v in record["results"].items())
        + "\n"
    )
    for label, warm in record["results"].items():
        if label.startswith("deployment-warm"):
            text += _warm_markdown(label, warm)
    return text + "\nMade by `.venv/bin/python benchmarks/deploy_latency.py`.\n"


KINDS = ("pull-messages", "pull-object", "confirm", "push-messages", "push-object")


def _warm_markdown(label: str, warm: dict[str, Any]) -> str:
    text = f"\n## {label}\n"
    if "overhead-per-round-s" in warm:
        met = "met" if warm["overhead-per-round-s"] <= GOAL_S else "not met"
        text += (
            f"\nGoal (a steady deployment round at most the simulation round + {GOAL_S} s): "
            f"{met}, {warm['overhead-per-round-s']:+.2f} s.\n"
        )
    if warm.get("where"):
        text += (
            "\nWhere a steady warm round's time goes, per message (means over the sites and "
            "rounds 2..R, seconds): the site's wait since its last reply (the other sites, the "
            "server's aggregation and evaluation), the pull of the message and its objects, the "
            "task in the site's worker (of it the ClientApp's handler), the reply's way back.\n\n"
            "| message | wait | pull | task | handler | reply |\n|---|---|---|---|---|---|\n"
        )
        for stage, t in warm["where"].items():
            text += (
                f"| {stage} | {t['wait-s']:.3f} | {t['pull-s']:.3f} | {t['task-s']:.3f} | "
                f"{t['handler-s']:.3f} | {t['reply-s']:.3f} |\n"
            )
        text += (
            "\nThe SuperNode's Fleet API requests per message (means: count, and milliseconds "
            "a request as the SuperNode sees it, object requests running two at a time):\n\n"
            "| message | " + " | ".join(KINDS) + " |\n|---|" + "---|" * len(KINDS) + "\n"
        )
        for stage, t in warm["where"].items():
            text += (
                f"| {stage} | "
                + " | ".join(
                    f"{t.get(f'{k}-n', 0):.1f}x {t.get(f'{k}-ms', 0):.0f} ms" for k in KINDS
                )
                + " |\n"
            )
    if "superlink-database-locked" in warm:
        text += (
            "\n'database is locked' in the SuperLink's log: "
            f"{warm['superlink-database-locked']} times.\n"
        )
    if warm.get("pickup"):
        text += (
            "\nA message's wait until the site's executor has it (push to hand-over, a probe "
            "app, 1 s apart, seconds): "
            + "; ".join(f"{k} {v}" for k, v in warm["pickup"].items())
            + "\n"
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
