"""What one message stage costs Flower's simulation engine by itself: a ServerApp sends every
site one message and waits for all replies, with a ClientApp that does nothing but answer
(an empty reply, or one holding a 4 MB array: the size of a 1M-parameter update).

This is the floor under any protocol that needs one more message a round (SecAgg+'s unmask
stage): fedllm's own work is not in it. Median of the stages after the first (the first one
starts the actors).

    .venv/bin/python benchmarks/engine_dispatch.py --sites 100     # ~1 min on 2 cores

Writes results/engine_dispatch.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from server.grid import polling  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PLAN: dict[str, Any] = {}  # set by main() before the simulation starts (same process)

client_app = ClientApp()


@client_app.train()
def answer(msg: Message, context: Context) -> Message:
    content = RecordDict({"reply": ConfigRecord({"ok": 1})})
    values = int(msg.content.config_records["ask"]["values"])  # type: ignore[arg-type]
    if values:
        content["update"] = ArrayRecord({"v": Array(np.zeros(values, dtype=np.uint32))})
    return Message(content=content, reply_to=msg)


server_app = ServerApp()


@server_app.main()
def stages(grid: Grid, context: Context) -> None:
    grid = polling(grid)  # as fedllm's ServerApp does
    while len(list(grid.get_node_ids())) < PLAN["sites"]:
        time.sleep(0.1)
    nodes = list(grid.get_node_ids())
    for values in PLAN["values"]:
        times = []
        for _ in range(PLAN["stages"] + 1):
            started = time.perf_counter()
            ask = ConfigRecord({"values": values})
            messages = [
                Message(RecordDict({"ask": ask}), dst_node_id=n, message_type="train")
                for n in nodes
            ]
            replies = list(grid.send_and_receive(messages))
            if any(r.has_error() for r in replies):
                raise RuntimeError(f"a site failed: {[r.error for r in replies if r.has_error()]}")
            times.append(time.perf_counter() - started)
        PLAN["rows"].append(
            {
                "sites": len(nodes),
                "reply-values": values,
                "stage-s": statistics.median(times[1:]),
                "stages-s": [round(t, 3) for t in times],
            }
        )
        print(f"  {len(nodes)} sites, replies of {values} values: {times[1:]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--stages", type=int, default=5, help="timed stages per reply size")
    args = parser.parse_args()
    from flwr.simulation import run_simulation

    load_before = os.getloadavg()[0]
    PLAN.update(sites=args.sites, stages=args.stages, values=[0, 1_000_000], rows=[])
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.sites,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    meta = {
        "command": "benchmarks/engine_dispatch.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine_dispatch.json").write_text(
        json.dumps({"meta": meta, "rows": PLAN["rows"]}, indent=1) + "\n"
    )
    lines = [
        "# Flower's simulation engine: one message stage with a ClientApp that only answers",
        "",
        f"{meta['command']}; {meta['cpus']} CPUs, load average before/after "
        f"{meta['load_before']} / {meta['load_after']}; median of {args.stages} stages "
        "after the first.",
        "",
        "| sites | reply | stage (s) | stages (s) |",
        "|---|---|---|---|",
    ]
    for row in PLAN["rows"]:
        reply = f"{row['reply-values']:,} uint32 values" if row["reply-values"] else "empty record"
        lines.append(
            f"| {row['sites']} | {reply} | {row['stage-s']:.3f} | "
            f"{', '.join(f'{t:.2f}' for t in row['stages-s'])} |"
        )
    (RESULTS / "engine_dispatch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
