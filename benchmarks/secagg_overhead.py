"""Secure aggregation overhead: round wall time with SecAgg+ / plain FedAvg, in one run.

Two parts, each measured against a plain baseline in the same run:

1. **Protocol rows**: 5, 20 and 100 sites, MLPs of about 100k and 1M parameters, on Flower's
   simulation engine (Ray, one CPU per virtual site) with fedllm's strategy (FedAvg over
   ``PlainAveraging`` vs ``SecureAveraging``) and the sites' real SecAgg+ handlers
   (``clients/secagg.py``) with every hardening on: signed round keys checked against a roster
   (each virtual site's Ed25519 key in its own folder), the policy's threshold checks, the
   survivor-set signatures, and the default neighbourhood sizing (complete graph up to 49
   sites, a ring of 49 at 100). Local training is deliberately short (2 SGD steps of an MLP on
   synthetic data) so the ratio shows the protocol, not the training. Round time = time
   between the server's end-of-round callbacks (no federated evaluation); the first round
   (actors importing torch, key stages as messages) is dropped and the median of the rest
   reported.
2. **fedllm simulate rows**: the real app (``fedllm simulate``, DP on, task defaults) on MNIST
   with IID sites, ``secagg=true`` vs ``secagg=false``: the CNN (26k parameters) at 100 sites
   (the issue's federation) and 5 sites, and the MLP option (``hidden-units=1258``: 1.0M
   parameters) at 100 sites, the MLP also with the neighbourhood set by hand to 23 / 13 (what
   the sizing gives when no site is assumed to collude with the server; SecAgg+ only, against
   the same plain row); steady rounds from ``metrics.json`` (``rounds[].elapsed-s``
   differences after round 1), with the server's per-stage SecAgg+ times from its log.

Where the time goes is measured three ways: at the server, per protocol stage (setup, key
sharing, the training stage with masking at the sites, unmask message, reveal message,
unmask computation); at the sites (masking in the train reply; the unmask answer, which also
does the next round's key sharing); and in-process, per primitive.

    .venv/bin/python benchmarks/secagg_overhead.py            # ~15 min on 2 quiet cores
    .venv/bin/python benchmarks/secagg_overhead.py --quick    # 5 sites, 100k, 2 timed rounds
    .venv/bin/python benchmarks/secagg_overhead.py --no-simulate   # protocol rows only

Writes results/secagg_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
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
from fedllm.crypto.signing import SiteKey  # noqa: E402
from fedllm.privacy import SitePolicy  # noqa: E402
from fedllm.secagg import (  # noqa: E402
    Roster,
    SecAggSettings,
    neighbourhood,
    prg,
    publish_public_key,
    weighted_vector,
)
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
# The virtual sites' identity folders (key, public key), shared by the Ray actors.
SITES = Path(tempfile.gettempdir()) / "fedllm-secagg-bench-sites"
# MNIST in ../shared/data beside the checkout, or in $FEDLLM_DATA (as the other benchmarks).
DATA = Path(os.environ.get("FEDLLM_DATA", ROOT / ".." / "shared" / "data")).resolve()
MNIST = os.environ.get("FEDLLM_MNIST", str(DATA / "mnist"))


def mlp(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(INPUTS, hidden), nn.Tanh(), nn.Linear(hidden, CLASSES))


# ---------------------------------------------------------------- the virtual sites
POLICY = SitePolicy(max_epsilon=1.0, delta=1e-5)  # requires SecAgg+, min threshold 2


def identity(context: Context, config: ConfigRecord) -> site_secagg.SecAggSite:
    """A virtual site's own key in its folder; the roster: every site folder there."""
    name = f"n{context.node_id}"
    key = SiteKey.load_or_generate(SITES / name / "site-key.pem")
    publish_public_key(SITES / name, key)
    roster = Roster.simulated(SITES, os.listdir(SITES))
    return site_secagg.SecAggSite(name, key, POLICY, roster)


def timed(handler: Any) -> Any:
    """A stage handler that reports its own wall time in its answer."""

    def run(msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        reply: Message = handler(msg, context)
        reply.content.config_records[proto.SECAGG]["site-seconds"] = time.perf_counter() - started
        return reply

    return run


client_app = ClientApp()
for _action, _handler in site_secagg.handlers(identity).items():
    client_app.train(_action)(timed(_handler))


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
        records = site_secagg.masked_update(
            msg, context, arrays, update, metrics, CLIP, identity=identity
        )
        metrics["mask-seconds"] = time.perf_counter() - started
        for key, record in records.items():
            content[key] = record
    else:
        content[proto.ARRAYS] = update
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------- the server, timed
class TimedSecAgg(SecureAveraging):
    """SecureAveraging with a stopwatch on each stage (server wall time) and the sites' own
    time per stage (from their answers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stages: dict[str, list[float]] = {}
        self.site_stages: dict[str, list[list[float]]] = {}
        self.rings: list[int] = []  # the ring (bits) of each round

    def configure(self, *args: Any, **kwargs: Any) -> Any:
        out = super().configure(*args, **kwargs)
        self.rings.append(self._ring.bits)
        return out

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
        name = action.removeprefix("secagg_")
        self._clock(name, time.perf_counter() - started)
        seconds = [float(r["site-seconds"]) for r in out.values() if "site-seconds" in r]
        self.site_stages.setdefault(name, []).append(seconds)
        return out

    def mean(self, server_round: int, replies: list[Message], current: Any) -> Any:
        started = time.perf_counter()
        before = sum(sum(self.stages.get(k, [])) for k in ("unmask", "reveal"))
        out = super().mean(server_round, replies, current)
        after = sum(sum(self.stages.get(k, [])) for k in ("unmask", "reveal"))
        self._clock("unmask-compute", time.perf_counter() - started - (after - before))
        return out


PLAN: dict[str, Any] = {}  # set by main() before the simulation starts (same process)
server_app = ServerApp()


@server_app.main()
def bench(grid: Grid, context: Context) -> None:
    for size in PLAN["sizes"]:
        initial = to_arrays(mlp(HIDDEN[size]))
        for mode in ("plain", "secagg"):
            sampling: dict[str, Any] = {
                "fraction_evaluate": 0.0,
                "min_available_nodes": PLAN["sites"],
                "min_train_nodes": PLAN["sites"],
            }
            averaging: Averaging = (
                TimedSecAgg(SecAggSettings(), CLIP) if mode != "plain" else PlainAveraging()
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
            logs = [strategy.logs[r] for r in list(strategy.logs)[1:]]
            sites = [s for log in logs for s in log.trained.values()]
            row = {
                "sites": PLAN["sites"],
                "params": sum(int(np.prod(a.shape)) for a in initial.values()),
                "size": size,
                "mode": mode,
                "round_s": statistics.median(times) if times else None,
                "rounds_s": times,
                "rejected": [log.rejected for log in logs if log.rejected],
                "site_train_s": statistics.median(s["train-seconds"] for s in sites),
            }
            if isinstance(averaging, TimedSecAgg):
                # Mean per timed round (setup and key sharing run in round 1 only; later
                # rounds get their keys and shares with the previous round's messages).
                row["neighbours"], row["threshold"] = neighbourhood(PLAN["sites"])
                row["rings"] = sorted(set(averaging.rings[1:]))  # the timed rounds'
                row["rings_by_round"] = averaging.rings
                row["stages_s"] = {k: sum(v[1:]) / len(times) for k, v in averaging.stages.items()}
                row["site_mask_s"] = statistics.median(s["mask-seconds"] for s in sites)
                steady = [
                    x
                    for per_round in averaging.site_stages.get("unmask", [])[1:]
                    for x in per_round
                ]
                row["site_unmask_s"] = statistics.median(steady) if steady else None
            PLAN["rows"].append(row)
            print(
                f"  {PLAN['sites']} sites, {size}, {mode}: round {row['round_s']:.2f} s", flush=True
            )


def simulate(sites: int, sizes: list[str], rounds: int, steps: int) -> list[dict[str, Any]]:
    from flwr.simulation import run_simulation

    PLAN.update(sites=sites, sizes=sizes, rounds=rounds + 1, steps=steps, rows=[])
    shutil.rmtree(SITES, ignore_errors=True)
    SITES.mkdir(parents=True)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=sites,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return list(PLAN["rows"])


# ---------------------------------------------------------------- fedllm simulate (MNIST CNN)
STAGE_LINE = re.compile(r"secagg: round (\d+), sum of (\d+) sites unmasked \((.*)\)")
RING_LINE = re.compile(r"secagg: round (\d+), keys shared by \d+ sites.*?, ring 2\*\*(\d+)")


def _model_arrays(model: str) -> Any:
    from fedllm.config import RunConfig
    from fedllm.simulation import default_config
    from fedllm.tasks import get_task

    values = {**default_config(ROOT), "task": "mnist", "hidden-units": MODELS[model]}
    cfg = RunConfig.from_flower(values)
    return to_arrays(get_task("mnist").build_model(cfg, (1, 28, 28)))


MODELS = {"cnn": 0, "mlp": 1258}  # MNIST's `hidden-units`: 0 = the CNN (26k), 1258: 1.0M MLP


def fedllm_simulate(
    sites: int,
    rounds: int,
    secagg: bool,
    out: Path,
    model: str = "cnn",
    chosen: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """One ``fedllm simulate`` run of MNIST's CNN or MLP (IID, DP on, task defaults): steady
    rounds from metrics.json, SecAgg+ stage times from the server's log. ``chosen``:
    `secagg-shares` / `secagg-threshold` set by hand (default: the sizing's)."""
    name = f"mnist-{model}-{sites}-{'secagg' if secagg else 'plain'}"
    if chosen is not None:
        name += f"-{chosen[0]}-{chosen[1]}"
    overrides: dict[str, Any] = {
        "hidden-units": MODELS[model],
        "task": '"mnist"',
        "data-path": f'"{MNIST}"',
        "partitioner": '"iid"',
        "num-sites": sites,
        "num-server-rounds": rounds,
        "secagg": str(secagg).lower(),
        "out-dir": f'"{out}"',
        "run-name": f'"{name}"',
    }
    if chosen is not None:
        overrides["secagg-shares"], overrides["secagg-threshold"] = chosen
    command = [sys.executable, "-m", "fedllm.cli", "simulate"]
    for key, value in overrides.items():
        command += ["-c", f"{key}={value}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - started
    log = done.stdout + done.stderr
    (out / f"{name}.log").write_text(log)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}); log: {out / name}.log")
    metrics = json.loads((out / name / "metrics.json").read_text())
    elapsed = [r["elapsed-s"] for r in metrics["rounds"]]
    steady = [b - a for a, b in itertools.pairwise(elapsed)]
    stages: dict[str, list[float]] = {}
    for match in STAGE_LINE.finditer(log):
        if int(match.group(1)) == 1:
            continue
        for part in match.group(3).split(", "):  # "unmask 1.23 s", "unmask compute 0.30 s"
            stage, seconds = part.removesuffix(" s").rsplit(" ", 1)
            stages.setdefault(stage, []).append(float(seconds))
    rings = sorted({int(bits) for r, bits in RING_LINE.findall(log) if int(r) > 1})
    return {
        "sites": sites,
        "model": model,
        "params": sum(int(np.prod(a.shape)) for a in _model_arrays(model).values()),
        "mode": "secagg" if secagg else "plain",
        "neighbourhood": list(chosen) if chosen else None,
        "rounds": rounds,
        "rings": rings,
        "round_s": statistics.median(steady),
        "rounds_s": [round(x, 3) for x in steady],
        "first_round_s": elapsed[0],
        "wall_s": round(wall, 1),
        "accuracy": metrics["final"].get("accuracy"),
        "epsilon": metrics["final"].get("epsilon"),
        "rejected": [r["rejected"] for r in metrics["rounds"] if r.get("rejected")],
        "stages_s": {k: statistics.median(v) for k, v in stages.items()},
    }


# ---------------------------------------------------------------- primitives, in-process
def primitives(params: int, reps: int = 3) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fedllm.secagg import combine_many, split_secret
    from fedllm.secagg.site import PAIRWISE, agree, masking_key, public_bytes

    rng = np.random.default_rng(0)
    delta = rng.normal(0, 0.01, params)
    sk, pk = X25519PrivateKey.generate(), public_bytes(X25519PrivateKey.generate())
    secret = os.urandom(16)
    site_key = SiteKey.load_or_generate(SITES / "primitives" / "site-key.pem")
    signature = site_key.sign(b"x" * 200)
    k, t = neighbourhood(100)
    shares = {n: split_secret(os.urandom(16), t, k) for n in range(100)}

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
        "x25519+hkdf": best(lambda: agree(sk, pk, PAIRWISE)),
        "ed25519 verify": best(lambda: site_key.public.verify(signature, b"x" * 200)),
        f"shamir split ({t} of {k})": best(lambda: split_secret(secret, t, k)),
        f"combine 100 secrets ({t} of {k})": best(lambda: combine_many(shares, t)),
        "masking key from seed": best(lambda: masking_key(secret)),
    }


def write(
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    prims: dict[str, dict[str, float]],
    meta: dict[str, Any],
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "secagg_overhead.json").write_text(
        json.dumps({"meta": meta, "rounds": rows, "simulate": runs, "primitives": prims}, indent=2)
        + "\n"
    )
    lines = [
        "# SecAgg+ overhead: round wall time, secure / plain, measured in one run",
        "",
        f"{meta['command']}; {meta['cpus']} CPUs, load average before/after "
        f"{meta['load_before']} / {meta['load_after']}; {meta['timed_rounds']} timed rounds "
        f"(median) per protocol row, {meta['local_steps']} local SGD steps of batch {BATCH}.",
        "",
        "## Protocol rows (synthetic MLP, hardening on)",
        "",
        "| sites | params | neighbours / threshold | ring (bits) | plain (s) | SecAgg+ (s) | "
        "ratio | train+mask | unmask msg | reveal msg | unmask compute | site mask | "
        "site unmask |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    plain = {(r["sites"], r["size"]): r for r in rows if r["mode"] == "plain"}
    for r in rows:
        if r["mode"] != "secagg":
            continue
        base = plain[(r["sites"], r["size"])]
        st = r.get("stages_s", {})
        train_mask = r["round_s"] - sum(st.values())
        cells = [train_mask, st.get("unmask"), st.get("reveal"), st.get("unmask-compute")]
        cells += [r.get("site_mask_s"), r.get("site_unmask_s")]
        fmt = ["-" if c is None else f"{c:.3f}" for c in cells]
        lines.append(
            f"| {r['sites']} | {r['params']:,} | {r['neighbours']} / {r['threshold']} | "
            f"{'/'.join(str(b) for b in r.get('rings', []))} | "
            f"{base['round_s']:.3f} | {r['round_s']:.3f} | "
            f"{r['round_s'] / base['round_s']:.2f}x | {' | '.join(fmt)} |"
        )
    if runs:
        lines += [
            "",
            "## fedllm simulate: MNIST, IID sites, DP on, task defaults",
            "",
            "| model | params | sites | neighbours / threshold | ring (bits) | plain round (s) | "
            "SecAgg+ round (s) | ratio | unmask msg | reveal msg | unmask compute | "
            "plain / SecAgg+ accuracy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        plain = {(r["model"], r["sites"]): r for r in runs if r["mode"] == "plain"}
        for q in runs:
            if q["mode"] != "secagg" or (q["model"], q["sites"]) not in plain:
                continue
            model, sites = q["model"], q["sites"]
            p = plain[(model, sites)]
            st = q["stages_s"]
            cells = [st.get(k) for k in ("unmask", "reveal", "unmask compute")]
            fmt = ["-" if c is None else f"{c:.2f}" for c in cells]
            rings = "/".join(str(b) for b in q.get("rings", []))
            k, t = q.get("neighbourhood") or neighbourhood(sites)
            lines.append(
                f"| {model.upper()} | {q['params']:,} | {sites} | {k} / {t} | {rings} | "
                f"{p['round_s']:.2f} | {q['round_s']:.2f} | "
                f"{q['round_s'] / p['round_s']:.2f}x | {' | '.join(fmt)} | "
                f"{p['accuracy']:.4f} / {q['accuracy']:.4f} |"
            )
    lines += ["", "Primitives (in-process, best of 3, seconds):", ""]
    lines += ["| params | " + " | ".join(next(iter(prims.values()))) + " |"]
    lines += ["|---" * (1 + len(next(iter(prims.values())))) + "|"]
    for size, p in prims.items():
        lines.append(f"| {size} | " + " | ".join(f"{v:.4f}" for v in p.values()) + " |")
    (RESULTS / "secagg_overhead.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, nargs="+", default=[5, 20, 100])
    parser.add_argument("--sizes", nargs="+", default=["100k", "1M"], choices=list(HIDDEN))
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration")
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument(
        "--simulate",
        nargs="*",
        default=["cnn:5", "cnn:100", "mlp:100", "mlp:100:23/13"],
        help="fedllm simulate runs, MODEL:SITES[:SHARES/THRESHOLD] (MODEL: cnn or mlp; "
        "SHARES/THRESHOLD: a hand-set neighbourhood, SecAgg+ only, against MODEL:SITES's "
        "plain run)",
    )
    parser.add_argument("--simulate-rounds", type=int, default=4)
    parser.add_argument("--no-simulate", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sites, args.sizes, args.rounds, args.no_simulate = [5], ["100k"], 2, True
    logging.getLogger("flwr").setLevel(logging.WARNING)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)
    SITES.mkdir(parents=True, exist_ok=True)
    prims = {size: primitives(267 * HIDDEN[size] + 10) for size in args.sizes}
    rows = []
    for sites in args.sites:
        rows += simulate(sites, args.sizes, args.rounds, args.local_steps)
    runs = []
    if not args.no_simulate:
        with tempfile.TemporaryDirectory(prefix="fedllm-secagg-bench-runs-") as out:
            for spec in args.simulate:
                model, sites_text, *hand = spec.split(":")
                sites = int(sites_text)
                chosen = None
                if hand:
                    shares, threshold = (int(x) for x in hand[0].split("/"))
                    chosen = (shares, threshold)
                for secure in (True,) if chosen else (False, True):
                    name = f"mnist-{model}-{sites}-{'secagg' if secure else 'plain'}"
                    if chosen:
                        name += f"-{chosen[0]}-{chosen[1]}"
                    try:
                        run = fedllm_simulate(
                            sites, args.simulate_rounds, secure, Path(out), model, chosen
                        )
                    except RuntimeError as err:  # keep the other rows; say what failed
                        print(f"  {name}: {err}", flush=True)
                        print((Path(out) / f"{name}.log").read_text()[-3000:])
                        continue
                    print(f"  {name}: round {run['round_s']:.2f} s", flush=True)
                    runs.append(run)
    meta = {
        "command": "benchmarks/secagg_overhead.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "timed_rounds": args.rounds,
        "local_steps": args.local_steps,
        "torch": torch.__version__,
    }
    write(rows, runs, prims, meta)
    print((RESULTS / "secagg_overhead.md").read_text())


if __name__ == "__main__":
    main()
