"""Per-round wall time in deployment mode vs simulation, same task, same sites, one run.

Three runs of the same federation (UCI heart disease, one site per hospital file: cleveland,
hungarian, va; DP-SGD at epsilon 1, RDP accountant, federated evaluation every round):

1. simulation: ``fedllm simulate`` (Flower's simulation engine, Ray, one process);
2. deployment, cold: a TLS SuperLink with node authentication and three SuperNodes as
   separate processes, whose executors preload nothing (``--cold``: every task imports torch,
   as Flower's default isolation, a fresh ``flwr-clientapp`` process per message, did before
   app pinning ruled it out): the "before";
3. deployment, warm: the same with ``--isolation process`` and fedllm's warm executor (ClientApp
   tasks forked from a process that has torch imported): the "after".

The ServerApp writes each round's elapsed time into metrics.json; a round's wall time is the
difference between consecutive rounds (round 1 also pays one-off costs: noise calibration,
first imports, so the steady state is the mean over rounds 2..R). Results:
benchmarks/results/deploy_latency.{md,json}. The machine's load is recorded with the numbers:
on a shared machine they move between runs.

    .venv/bin/python benchmarks/deploy_latency.py [--rounds 4]
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
from tests.support.local_federation import LocalFederation, free_port  # noqa: E402

HEART = ROOT.parent / "shared" / "data" / "heart_disease"
CENTERS = ("cleveland", "hungarian", "va")
RESULTS = Path(__file__).resolve().parent / "results"


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


def deployed(work: Path, data: Path, rounds: int, warm: bool) -> list[float]:
    name = "warm" if warm else "cold"
    root = work / name
    root.mkdir()
    made = create_deployment(root / "pki", ["localhost", "127.0.0.1"])
    local = LocalFederation(root)
    pinned = deploy.FabInfo.of(deploy.build_fab(ROOT))  # the app every site trusts
    try:
        sites = {c: local.add_site(c, [pinned]) for c in CENTERS}  # keys made at the sites
        local.start_superlink([root / "pki" / "nodes" / f"{c}.pub" for c in CENTERS], free_port())
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
    finally:
        local.close()
    return round_times(root / "runs" / name / "metrics.json")


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
    args = parser.parse_args()
    if not all((HEART / f"processed.{c}.data").is_file() for c in CENTERS):
        print(f"deploy_latency: needs the UCI heart disease files in {HEART}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedllm-deploy-latency-") as tmp:
        work = Path(tmp)
        data = work / "heart"
        data.mkdir()
        for center in CENTERS:  # one file per site; the server's held-out rows are the same
            shutil.copy(HEART / f"processed.{center}.data", data)
        results = {}
        for label, measure in (
            ("simulation", lambda: simulate(work, data, args.rounds)),
            ("deployment-cold", lambda: deployed(work, data, args.rounds, warm=False)),
            ("deployment-warm", lambda: deployed(work, data, args.rounds, warm=True)),
        ):
            started = time.monotonic()
            results[label] = summary(measure())
            print(f"{label}: {results[label]} ({time.monotonic() - started:.0f} s)", flush=True)
    load_after = os.getloadavg()
    sim = results["simulation"]["steady-mean-s"]
    for label in ("deployment-cold", "deployment-warm"):
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
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy_latency.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "deploy_latency.md").write_text(_markdown(record))
    print(_markdown(record))
    return 0


def _markdown(record: dict[str, Any]) -> str:
    rows = [
        "| mode | round 1 | steady round (mean of 2..R) | / simulation | overhead per round |",
        "|---|---|---|---|---|",
    ]
    for label, r in record["results"].items():
        ratio = r.get("ratio-to-simulation", 1.0)
        overhead = r.get("overhead-per-round-s", 0.0)
        rows.append(
            f"| {label} | {r['round-1-s']:.1f} s | {r['steady-mean-s']:.1f} s | "
            f"{ratio:.2f}x | {overhead:+.1f} s |"
        )
    return (
        "# Deployment round latency\n\n"
        f"{record['task']}, {record['rounds']} rounds, DP at epsilon 1 (RDP), federated "
        f"evaluation every round; {record['cpus']} CPUs, load average before "
        f"{record['load-average-before']}, after {record['load-average-after']} (a shared "
        "machine: other jobs ran too).\n\n" + "\n".join(rows) + "\n\n"
        "Per-round rounds (s): "
        + "; ".join(f"{k} {v['rounds-s']}" for k, v in record["results"].items())
        + "\n\nMade by `.venv/bin/python benchmarks/deploy_latency.py`.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
