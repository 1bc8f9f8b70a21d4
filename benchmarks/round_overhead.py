"""A DP round end to end vs a plain round, and a site's budget pre-check on a long ledger.

Two federations run with ``fedllm simulate`` (secure aggregation and checkpoints off), each
once without DP and once with DP for every accountant asked for (`prv`, the default, first):
UCI heart disease (4 hospitals, natural split, 20 rounds) and breast cancer (the defaults, 10
rounds). The steady round is the mean of rounds 2..R of the differences of ``metrics.json``
``rounds[].elapsed-s`` (round 1 holds Ray's start and the noise calibration).

The pre-check is what a site does before training, on a 1000-entry ledger (50 runs of 20
rounds at epsilon 1 each, five schedules in turn) written by the real ledger code: under the
ledger lock, read and verify the ledger (from the bytes verified last time), then check the
run's target and the policy's max-epsilon for the planned round (far from both: decided by the
accountant's bound where it has one). Timed after each of the last rounds (the composition
kept per ledger head, as from one round to the next) and cold (a new process: every entry
verified and composed); the figure of the history plus the planned round that the new entry
records (the accountant's own, or PLD's where PRV's exact figure is out of reach) is timed
beside it, not memoized, in a child process with a time and memory limit.

    .venv/bin/python benchmarks/round_overhead.py --data /work/shared/data    # ~10 min, 2 cores
    .venv/bin/python benchmarks/round_overhead.py --quick                     # pre-check only

Writes results/round_overhead.{json,md} (--quick: results/round_overhead-precheck.{json,md}).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedllm.crypto import SiteKey  # noqa: E402
from fedllm.privacy import (  # noqa: E402
    Composition,
    DPEvent,
    DPSchedule,
    PrivacyLedger,
    calibrate_noise,
    check_budget,
    spent,
)
from fedllm.privacy import budget as budget_memo  # noqa: E402
from fedllm.privacy import ledger as ledger_memo  # noqa: E402
from fedllm.privacy.accountants.pld import _FIGURES as pld_figures  # noqa: E402
from fedllm.privacy.accountants.prv import _CLOSED as pld_fallbacks  # noqa: E402
from fedllm.privacy.accountants.prv import prv_epsilon  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GOAL_RATIO, GOAL_PRECHECK_MS = 1.3, 10.0
ENTRIES, RUN_ROUNDS = 1000, 20
EXACT_LIMIT_S, EXACT_MEMORY = 60.0, 4 << 30  # the exact figure of a long history: PRV's blows up
PLANS = [  # (sample rate, steps a round): sites of 240, 110, 2000, 600 and 12000 examples
    DPSchedule(0.5, 2, RUN_ROUNDS),
    DPSchedule(1.0, 1, RUN_ROUNDS),
    DPSchedule(0.05, 20, RUN_ROUNDS),
    DPSchedule(0.2, 5, RUN_ROUNDS),
    DPSchedule(0.01, 100, RUN_ROUNDS),
]


@dataclass(frozen=True)
class Federation:
    name: str
    rounds: int
    overrides: tuple[str, ...]


def federations(data: Path) -> list[Federation]:
    heart = (
        f'data-path="{data / "heart_disease"}"',
        'task="heart-disease"',
        'partitioner="natural"',
        "num-server-rounds=20",
    )
    return [
        Federation("UCI heart disease, 4 hospitals, 20 rounds", 20, heart),
        Federation("breast cancer (default), 10 rounds", 10, ()),
    ]


def simulate(fed: Federation, dp: bool, accountant: str, out: Path, name: str) -> list[float]:
    """One ``fedllm simulate`` run; the rounds' ``elapsed-s``."""
    settings = [
        "secagg=false",
        'checkpoint="off"',
        f"dp={'true' if dp else 'false'}",
        f'accountant="{accountant}"',
        f'out-dir="{out}"',
        f'run-name="{name}"',
        *fed.overrides,
    ]
    command = [str(Path(sys.executable).parent / "fedllm"), "simulate"]
    for setting in settings:
        command += ["-c", setting]
    log = out / f"{name}.log"
    with open(log, "w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fedllm simulate failed ({done.returncode}); see {log}")
    metrics = json.loads((out / name / "metrics.json").read_text())
    return [float(r["elapsed-s"]) for r in metrics["rounds"]]


def steady_round(elapsed: list[float]) -> float:
    """Mean of rounds 2..R: the differences of the cumulative ``elapsed-s``."""
    return statistics.mean(b - a for a, b in itertools.pairwise(elapsed))


def run_events() -> list[DPEvent]:
    """Each plan's round at the noise that spends epsilon 1 over its run (RDP, delta 1e-5)."""
    return [p.round_event(calibrate_noise(1.0, 1e-5, p, "rdp")) for p in PLANS]


def long_ledger(folder: Path, events: list[DPEvent]) -> PrivacyLedger:
    """A site that took part in 50 runs of 20 rounds at epsilon 1 each, five kinds in turn."""
    ledger = PrivacyLedger(folder / "ledger.jsonl", SiteKey.generate(folder / "site-key.pem"))
    for i in range(ENTRIES):
        run = i // RUN_ROUNDS
        with ledger.locked() as state:
            ledger.append(
                state,
                site="site-0",
                run_id=str(run),
                server_round=i % RUN_ROUNDS + 1,
                event=events[run % len(events)],
                clip_norm=1.0,
                delta=1e-5,
                accountant="rdp",  # entries' own figures: fast to write; checks use any
            )
    return ledger


def precheck(
    ledger: PrivacyLedger, events: list[DPEvent], accountant: str, reps: int
) -> dict[str, Any]:
    """Milliseconds: the pre-check after each of ``reps`` rounds (median), a cold one (a new
    process), and the exact figure after the planned round."""
    run, delta = ENTRIES // RUN_ROUNDS - 1, 1e-5
    planned = events[run % len(events)]  # the last run goes on
    target = max_epsilon = 1e6  # far from both limits

    def check() -> None:
        with ledger.locked() as state:
            in_run = spent(state.entries, delta, accountant, str(run)).then(planned)
            if not in_run.within(target):
                raise SystemExit("the run target refused the planned round")
            check_budget(state, planned, delta, accountant, max_epsilon)

    def train() -> None:  # what the round between two pre-checks records
        with ledger.locked() as state:
            ledger.append(
                state,
                site="site-0",
                run_id=str(run),
                server_round=len(state.entries) + 1,
                event=planned,
                clip_norm=1.0,
                delta=1e-5,
                accountant="rdp",
            )

    budget_memo._COMPOSED.clear()
    ledger_memo._VERIFIED.clear()
    start = time.perf_counter()
    check()  # a new process: verify and compose every entry
    cold = time.perf_counter() - start
    warm = []
    for _ in range(reps):
        train()
        start = time.perf_counter()
        check()
        warm.append(time.perf_counter() - start)
    after = spent(ledger.read().entries, delta, accountant).then(planned)
    exact = _exact_figure(after, EXACT_LIMIT_S)
    return {
        "entries": len(ledger.read().entries),
        "merged-events": len(after.history),
        "warm-ms": 1e3 * statistics.median(warm),
        "warm-max-ms": 1e3 * max(warm),
        "cold-ms": 1e3 * cold,
        "exact-figure-ms": None if exact is None else 1e3 * exact[0],
        "epsilon-after": None if exact is None else exact[1],
        "figure-accountant": None if exact is None else exact[2],
    }


def _exact_figure(after: Composition, limit_s: float) -> tuple[float, float, str] | None:
    """(seconds, epsilon, accountant) of the figure the new entry records, in a child process
    (no memo, at most ``limit_s`` seconds and EXACT_MEMORY bytes); None when it did not finish
    within them."""
    with multiprocessing.get_context("fork").Pool(1, _limit_memory) as pool:
        job = pool.apply_async(_timed_epsilon, (after,))
        try:
            return job.get(timeout=limit_s)  # type: ignore[no-any-return]
        except (multiprocessing.TimeoutError, MemoryError):
            return None


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (EXACT_MEMORY, EXACT_MEMORY))


def _timed_epsilon(after: Composition) -> tuple[float, float, str]:
    prv_epsilon.cache_clear()
    pld_figures.clear()
    pld_fallbacks.clear()
    start = time.perf_counter()
    figure = after.figure()
    return time.perf_counter() - start, figure.epsilon, figure.accountant


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load-average": list(os.getloadavg())}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# A DP round end to end vs a plain round; a site's pre-check on a 1000-entry ledger",
        "",
        f"`benchmarks/round_overhead.py`, one run; {results['machine-before']['cpus']} CPUs, "
        f"load average before/after {results['machine-before']['load-average'][0]:.2f} / "
        f"{results['machine-after']['load-average'][0]:.2f} "
        f"({results['note']}).",
        "",
        "Steady round (mean of rounds 2..R, `fedllm simulate`, secure aggregation and "
        "checkpoints off):",
        "",
        "| federation | plain round | DP round | accountant | DP / plain | goal |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rounds"]:
        for acct, dp in row["dp"].items():
            ratio = dp / row["plain"]
            met = "met" if ratio <= GOAL_RATIO else "not met"
            lines.append(
                f"| {row['federation']} | {row['plain']:.3f} s | {dp:.3f} s | {acct} | "
                f"{ratio:.2f}x | <= {GOAL_RATIO}x: {met} |"
            )
    lines += [
        "",
        f"Pre-check before training on a {ENTRIES}-entry ledger ({ENTRIES // RUN_ROUNDS} runs "
        f"of {RUN_ROUNDS} rounds at epsilon 1, {len(PLANS)} schedules in turn): lock, read and "
        "verify, run-target and max-epsilon "
        "checks; warm = after each of the last rounds, with the composition kept from the round "
        "before (median, and the slowest), cold = a new process; figure = the epsilon after the "
        "planned round that the new entry records (the accountant's, or pld's where prv's "
        "exact figure is out of reach), not memoized:",
        "",
        "| accountant | warm pre-check | goal | cold pre-check | figure | epsilon after | by |"
        " merged events |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for acct, p in results["precheck"].items():
        met = "met" if p["warm-ms"] <= GOAL_PRECHECK_MS else "not met"
        exact = (
            f"{p['exact-figure-ms']:.1f} ms"
            if p["exact-figure-ms"] is not None
            else f"not within {EXACT_LIMIT_S:g} s and {EXACT_MEMORY >> 30} GB"
        )
        figure = "-" if p["epsilon-after"] is None else f"{p['epsilon-after']:.3f}"
        by = p.get("figure-accountant") or "-"
        lines.append(
            f"| {acct} | {p['warm-ms']:.2f} ms (max {p['warm-max-ms']:.1f}) | "
            f"<= {GOAL_PRECHECK_MS:g} ms: {met} | {p['cold-ms']:.0f} ms | {exact} | "
            f"{figure} | {by} | {p['merged-events']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=(ROOT / ".." / "shared" / "data").resolve())
    parser.add_argument("--accountants", default="prv,pld,rdp", help="DP rows, comma-separated")
    parser.add_argument("--reps", type=int, default=25, help="warm pre-checks timed")
    parser.add_argument("--quick", action="store_true", help="the pre-check only")
    parser.add_argument("--note", default="a shared machine: other work was running")
    args = parser.parse_args()
    accountants = args.accountants.split(",")
    results: dict[str, Any] = {"machine-before": machine(), "note": args.note, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="round-overhead-") as tmp:
        out = Path(tmp)
        if not args.quick:
            for i, fed in enumerate(federations(args.data)):
                plain = steady_round(simulate(fed, False, accountants[0], out, f"f{i}-plain"))
                row: dict[str, Any] = {"federation": fed.name, "plain": plain, "dp": {}}
                for acct in accountants:
                    row["dp"][acct] = steady_round(simulate(fed, True, acct, out, f"f{i}-{acct}"))
                    print(f"{fed.name}: plain {plain:.3f} s, {acct} {row['dp'][acct]:.3f} s")
                results["rounds"].append(row)
        (out / "ledger").mkdir()
        events = run_events()
        ledger = long_ledger(out / "ledger", events)
        results["precheck"] = {}
        for acct in accountants:
            p = results["precheck"][acct] = precheck(ledger, events, acct, args.reps)
            print(f"pre-check {acct}: warm {p['warm-ms']:.2f} ms, cold {p['cold-ms']:.0f} ms")
    results["machine-after"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "round_overhead-precheck" if args.quick else "round_overhead"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
