"""Secure aggregation overhead: round wall time with SecAgg+ / plain FedAvg, in one run.

For 5 and 20 sites and models of about 100k and 1M parameters, each configuration runs a few
rounds on Flower's simulation engine (Ray, one CPU per virtual site) with fedllm's own
strategy (FedAvg over ``PlainAveraging`` vs ``SecureAveraging``) and SecAgg+ site handlers
(``clients/secagg.py``). Local training is deliberately short (a few SGD steps of an MLP on
synthetic data) so the ratio shows the protocol, not the training: with real DP training the
same absolute overhead is a smaller fraction of a round. Round time = time between the
server's end-of-round callbacks (no federated evaluation); the first round (Ray actors
importing torch) is dropped and the median of the rest reported.

Where the time goes is measured twice: at the server, per protocol stage (setup, key sharing,
the training stage with masking at the sites, unmask message, unmask computation); and
in-process, per primitive (quantization, one AES-CTR mask, key agreement, Shamir shares).

    .venv/bin/python benchmarks/secagg_overhead.py            # ~7 min on 2 shared cores
    .venv/bin/python benchmarks/secagg_overhead.py --quick    # 5 sites, 100k, 2 timed rounds

Writes results/secagg_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from clients import secagg as site_secagg  # noqa: E402
from fedllm import protocol as proto  # noqa: E402
from fedllm.secagg import Layout, SecAggSettings, prg, weighted_vector  # noqa: E402
from fedllm.weights import to_arrays  # noqa: E402
from server.aggregation import Averaging, PlainAveraging  # noqa: E402
from server.grid import polling  # noqa: E402
from server.secagg import SecureAveraging  # noqa: E402
from server.site_records import SiteRecords  # noqa: E402
from server.strategies import FedAvg  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
INPUTS, CLASSES, BATCH = 256, 10, 64
HIDDEN = {"100k": 375, "1M": 3745}  # 267 * h + 10 parameters: 100,135 and 1,000,025
CLIP = 8.0
LONG_TRAINING = 40  # local SGD steps of the supplementary 5-site, 1M-parameter rows


def mlp(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(INPUTS, hidden), nn.Tanh(), nn.Linear(hidden, CLASSES))


# ---------------------------------------------------------------- the virtual sites
client_app = ClientApp()
for _action, _handler in site_secagg.HANDLERS.items():
    client_app.train(_action)(_handler)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content.config_records[proto.CONFIG]
    arrays = msg.content.array_records[proto.ARRAYS]
    started = time.perf_counter()
    torch.set_num_threads(1)
    model = mlp(int(config["hidden"]))  # type: ignore[call-overload]
    model.load_state_dict(arrays.to_torch_state_dict())
    gen = torch.Generator().manual_seed(context.node_id % 2**31)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(int(config["local-steps"])):  # type: ignore[call-overload]
        x, y = torch.randn(BATCH, INPUTS, generator=gen), torch.randint(0, CLASSES, (BATCH,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    update = to_arrays(model)
    metrics = MetricRecord({proto.NUM_EXAMPLES: 100 + context.node_id % 97, proto.TRAIN_LOSS: 0.0})
    metrics["train-seconds"] = time.perf_counter() - started
    content = RecordDict(
        {proto.METRICS: metrics, proto.SITE: ConfigRecord({proto.SITE_NAME: f"n{context.node_id}"})}
    )
    if proto.SECAGG in msg.content.config_records:
        started = time.perf_counter()
        records = site_secagg.masked_update(msg, context, arrays, update, metrics, CLIP)
        metrics["mask-seconds"] = time.perf_counter() - started
        for key, record in records.items():
            content[key] = record
    else:
        content[proto.ARRAYS] = update
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------- the server, timed
class TimedSecAgg(SecureAveraging):
    """SecureAveraging with a stopwatch on each stage (server wall time)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stages: dict[str, list[float]] = {}

    def _clock(self, name: str, seconds: float) -> None:
        self.stages.setdefault(name, []).append(seconds)

    def _exchange(
        self,
        server_round: int,
        action: str,
        requests: dict[int, dict[str, Any]],
        lost: dict[int, str] | None = None,
    ) -> Any:
        started = time.perf_counter()
        out = super()._exchange(server_round, action, requests, lost)
        self._clock(action.removeprefix("secagg_"), time.perf_counter() - started)
        return out

    def mean(self, server_round: int, replies: list[Message], current: Any) -> Any:
        started = time.perf_counter()
        before = sum(self.stages.get("unmask", []))
        out = super().mean(server_round, replies, current)
        spent = time.perf_counter() - started - (sum(self.stages.get("unmask", [])) - before)
        self._clock("unmask-compute", spent)
        return out


PLAN: dict[str, Any] = {}  # set by main() before the simulation starts (same process)
server_app = ServerApp()


@server_app.main()
def bench(grid: Grid, context: Context) -> None:
    for size in PLAN["sizes"]:
        initial = to_arrays(mlp(HIDDEN[size]))
        for mode, shares in PLAN["modes"]:
            sampling: dict[str, Any] = {
                "fraction_evaluate": 0.0,
                "min_available_nodes": PLAN["sites"],
                "min_train_nodes": PLAN["sites"],
            }
            averaging: Averaging = (
                TimedSecAgg(SecAggSettings(shares, 0), CLIP)
                if mode != "plain"
                else PlainAveraging()
            )
            strategy = SiteRecords(FedAvg(averaging, **sampling), averaging)
            marks: list[float] = []
            strategy.start(
                grid=polling(grid),  # as fedllm's ServerApp does
                initial_arrays=initial,
                num_rounds=PLAN["rounds"],
                train_config=ConfigRecord({"hidden": HIDDEN[size], "local-steps": PLAN["steps"]}),
                evaluate_fn=lambda r, a, marks=marks: marks.append(time.perf_counter()) or None,
            )
            times = [b - a for a, b in itertools.pairwise(marks)][1:]
            sites = [s for r in list(strategy.logs)[1:] for s in strategy.logs[r].trained.values()]
            row = {
                "sites": PLAN["sites"],
                "params": sum(int(np.prod(a.shape)) for a in initial.values()),
                "size": size,
                "mode": mode,
                "shares": shares,
                "round_s": statistics.median(times),
                "rounds_s": times,
                "site_train_s": statistics.median(s["train-seconds"] for s in sites),
            }
            if isinstance(averaging, TimedSecAgg):
                # Mean per timed round (setup and key sharing run in round 1 only; later
                # rounds get their keys and shares with the previous round's messages).
                row["stages_s"] = {k: sum(v[1:]) / len(times) for k, v in averaging.stages.items()}
                row["site_mask_s"] = statistics.median(s["mask-seconds"] for s in sites)
            PLAN["rows"].append(row)
            print(
                f"  {PLAN['sites']} sites, {size}, {mode}: round {row['round_s']:.2f} s", flush=True
            )


def simulate(sites: int, sizes: list[str], rounds: int, steps: int) -> list[dict[str, Any]]:
    from flwr.simulation import run_simulation

    modes: list[tuple[str, int]] = [("plain", 0), ("secagg", 0)]
    if sites > 7:
        modes.append(("secagg+ 7 neighbours", 7))
    PLAN.update(sites=sites, sizes=sizes, rounds=rounds + 1, steps=steps, modes=modes, rows=[])
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=sites,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return list(PLAN["rows"])


# ---------------------------------------------------------------- primitives, in-process
def primitives(params: int, reps: int = 3) -> dict[str, float]:
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.supercore.primitives.asymmetric import generate_key_pairs

    from fedllm.secagg.site import combine_secret, masking_key, split_secret

    rng = np.random.default_rng(0)
    delta = rng.normal(0, 0.01, params)
    sk, pk = generate_key_pairs()
    secret = os.urandom(16)

    def best(fn: Any) -> float:
        out = []
        for _ in range(reps):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
        return min(out)

    return {
        "quantize+weight": best(lambda: weighted_vector(delta, 123, CLIP, rng)),
        "aes-ctr mask": best(lambda: prg(os.urandom(32), params + 1)),
        "uint64 add": best(lambda: np.add(delta.view(np.uint64), delta.view(np.uint64))),
        "key agreement (ECDH+HKDF)": best(lambda: generate_shared_key(sk, pk)),
        "shamir split (5 of 9)": best(lambda: split_secret(secret, 5, 9)),
        "shamir combine (5)": best(lambda: combine_secret(split_secret(secret, 5, 9)[:5])),
        "masking key from seed": best(lambda: masking_key(secret)),
        "layout flatten": best(lambda: Layout.of(to_arrays(mlp(HIDDEN["100k"])))),
    }


def write(
    rows: list[dict[str, Any]], prims: dict[str, dict[str, float]], meta: dict[str, Any]
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "secagg_overhead.json").write_text(
        json.dumps({"meta": meta, "rounds": rows, "primitives": prims}, indent=2) + "\n"
    )
    base = {
        (r["sites"], r["size"], r["mode"].partition(",")[2]): r["round_s"]
        for r in rows
        if r["mode"].startswith("plain")
    }
    lines = [
        "# SecAgg+ overhead: round wall time, secure / plain FedAvg",
        "",
        f"{meta['command']}; {meta['cpus']} CPUs, load average before/after "
        f"{meta['load_before']} / {meta['load_after']}; {meta['timed_rounds']} timed rounds "
        f"(median), {meta['local_steps']} local SGD steps of batch {BATCH} per round.",
        "",
        "| sites | params | mode | round (s) | ratio | setup | share keys | train+mask | "
        "unmask msg | unmask compute | site mask (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        st = r.get("stages_s", {})
        ratio = r["round_s"] / base[(r["sites"], r["size"], r["mode"].partition(",")[2])]
        train_mask = r["round_s"] - sum(st.values()) if st else r["round_s"]
        cells = (
            [st.get(k) for k in ("setup", "share_keys")]
            + [train_mask]
            + [st.get(k) for k in ("unmask", "unmask-compute")]
        )
        fmt = ["-" if c is None else f"{c:.3f}" for c in cells]
        mask = f"{r['site_mask_s']:.3f}" if "site_mask_s" in r else "-"
        lines.append(
            f"| {r['sites']} | {r['params']:,} | {r['mode']} | {r['round_s']:.3f} | "
            f"{ratio:.2f}x | {' | '.join(fmt)} | {mask} |"
        )
    lines += ["", "Primitives (in-process, best of 3, seconds):", ""]
    lines += ["| params | " + " | ".join(next(iter(prims.values()))) + " |"]
    lines += ["|---" * (1 + len(next(iter(prims.values())))) + "|"]
    for size, p in prims.items():
        lines.append(f"| {size} | " + " | ".join(f"{v:.4f}" for v in p.values()) + " |")
    (RESULTS / "secagg_overhead.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--sizes", nargs="+", default=["100k", "1M"], choices=list(HIDDEN))
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration")
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sites, args.sizes, args.rounds = [5], ["100k"], 2
    logging.getLogger("flwr").setLevel(logging.WARNING)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)
    prims = {size: primitives(267 * HIDDEN[size] + 10) for size in args.sizes}
    rows = []
    for sites in args.sites:
        rows += simulate(sites, args.sizes, args.rounds, args.local_steps)
    if not args.quick:  # the same protocol cost beside a longer local training
        for row in simulate(5, ["1M"], args.rounds, LONG_TRAINING):
            rows.append({**row, "mode": f"{row['mode']}, {LONG_TRAINING} local steps"})
    meta = {
        "command": "benchmarks/secagg_overhead.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "timed_rounds": args.rounds,
        "local_steps": args.local_steps,
        "torch": torch.__version__,
    }
    write(rows, prims, meta)
    print((RESULTS / "secagg_overhead.md").read_text())


if __name__ == "__main__":
    main()
