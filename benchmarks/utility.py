"""Utility benchmark: fedllm beside the peer (plain Flower + Opacus, ``benchmarks/peer/``),
every number from one protocol, in one command.

1. **Tune** (``benchmarks/tuning.py``), both sides alike: each data set's grid (the same grid
   for both sides) at the strictest epsilon asked for (reused for the others) and without DP,
   on validation rows carved from the sites' training rows (never a row a reported run holds
   out), with tuning seeds apart from the reported ones, in-process (each side's own local
   training, the same FedAvg). Every configuration and its validation scores go to
   ``utility-sweep.{json,md}``.
2. **Report**, from the real products, one subprocess per run: ``fedllm simulate`` for fedllm,
   ``benchmarks/peer/simulate.py`` (the peer's Flower App on Flower's simulation engine) for
   the peer, each with its own chosen setting, for every epsilon, without DP, and every
   reported seed; final-round accuracy on the same pooled held-out rows.
3. **Tables**: ``utility.{json,md}``: mean +- std over the reported seeds, side by side, with
   the epsilon each side reports (fedllm's cumulative; the peer's true cumulative beside the
   per-round epsilon its fresh engine prints: the honesty gap).

    .venv/bin/python benchmarks/utility.py                 # the full table (time: README)
    .venv/bin/python benchmarks/utility.py --pilot         # every code path, small and short
    .venv/bin/python benchmarks/utility.py --tasks strategies   # FedAvg / FedAdam / FedProx
    .venv/bin/python benchmarks/utility.py --estimate-from benchmarks/results/utility-pilot

A run that stops can be resumed with the same arguments and ``--resume`` (the results folder
is ``--results``, default results/utility): finished tuning runs and finished reported runs are
kept, and a resumed command may add rows (data sets, epsilons, strategies) to them. The data
sets are read from ../shared/data beside the checkout, or from $FEDLLM_DATA.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from tuning import SIDES, Setting, choose, grid, tune_job  # noqa: E402
from utility_report import estimate, markdown, sweep_markdown  # noqa: E402

DATA = Path(os.environ.get("FEDLLM_DATA", ROOT / ".." / "shared" / "data")).resolve()
RESULTS = BENCHMARKS / "results"
DELTA = 1e-5


@dataclass(frozen=True)
class DataSet:
    """A row group of the table: fixed run-config keys, and one grid per privacy regime."""

    label: str
    config: dict[str, object]
    dp_grid: tuple[Setting, ...]
    off_grid: tuple[Setting, ...]
    validation_fraction: float = 0.2
    strategies: dict[str, dict[str, object]] = field(default_factory=dict)


TABULAR_DP = grid((1.0, 4.0), (64, 128), (0.5, 1.0))
TABULAR_OFF = grid((1.0, 4.0), (64, 128), (0.5,))  # no clipping without DP
# Flower's FedAdam server rate (0.1) and Li et al.'s middle mu (0.1), untuned; the sites use
# the data set's fedllm DP choice.
STRATEGIES: dict[str, dict[str, object]] = {
    "fedavg": {"strategy": "fedavg"},
    "fedadam": {"strategy": "fedadam", "server-learning-rate": 0.1},
    "fedprox": {"strategy": "fedprox", "proximal-mu": 0.1},
}
DATASETS: dict[str, DataSet] = {
    "heart-disease": DataSet(
        "heart disease (4 hospitals, natural split, 20 rounds)",
        {
            "task": "heart-disease",
            "data-path": str(DATA / "heart_disease"),
            "partitioner": "natural",
            "num-sites": 4,
            "num-server-rounds": 20,
            "local-epochs": 1,
            "hidden-units": 0,
        },
        TABULAR_DP,
        TABULAR_OFF,
        strategies=STRATEGIES,
    ),
    "breast-cancer": DataSet(
        "breast cancer (4 Dirichlet sites, alpha 1, 10 rounds)",
        {
            "task": "breast-cancer",
            "partitioner": "dirichlet",
            "dirichlet-alpha": 1.0,
            "num-sites": 4,
            "num-server-rounds": 10,
            "local-epochs": 1,
            "hidden-units": 0,
        },
        TABULAR_DP,
        TABULAR_OFF,
        strategies=STRATEGIES,
    ),
    # The task defaults: 4 Dirichlet sites (alpha 1), 8 rounds; the defaults' own setting
    # (rate 4, batch 512, clip 1) is in the DP grid. Plain SGD diverges at DP's rates.
    "mnist": DataSet(
        "MNIST (4 Dirichlet sites, alpha 1, 8 rounds: the task defaults)",
        {
            "task": "mnist",
            "data-path": str(DATA / "mnist"),
            "partitioner": "dirichlet",
            "dirichlet-alpha": 1.0,
            "num-sites": 4,
            "num-server-rounds": 8,
            "local-epochs": 1,
        },
        grid((2.0, 4.0), (256, 512), (1.0,)),
        grid((0.5, 1.0), (256, 512), (1.0,)),
        validation_fraction=0.1,
    ),
}


@dataclass(frozen=True)
class Plan:
    """What one invocation runs."""

    datasets: tuple[str, ...]
    strategies: tuple[str, ...]  # data sets whose strategy rows are run
    epsilons: tuple[float, ...]
    dp_off: bool
    seeds: tuple[int, ...]
    tuning_seeds: tuple[int, ...]
    max_rounds: int  # 0: each data set's rounds; else at most this many (a pilot)
    grid_limit: int  # 0: every setting; else the first ones of each grid (a pilot)

    def regimes(self) -> list[float | None]:
        """None = no DP; the epsilons, strictest first."""
        return ([None] if self.dp_off else []) + sorted(self.epsilons)

    def base(self, name: str) -> dict[str, object]:
        config = dict(DATASETS[name].config)
        if self.max_rounds:
            config["num-server-rounds"] = min(int(config["num-server-rounds"]), self.max_rounds)  # type: ignore[call-overload]
        return config

    def grid(self, name: str, dp: bool) -> tuple[Setting, ...]:
        full = DATASETS[name].dp_grid if dp else DATASETS[name].off_grid
        return full[: self.grid_limit] if self.grid_limit else full

    def tune_regimes(self) -> list[float | None]:
        """Tuned at the strictest epsilon (reused for the others) and without DP."""
        return ([None] if self.dp_off else []) + ([min(self.epsilons)] if self.epsilons else [])


def privacy(eps: float | None) -> dict[str, object]:
    return {"dp": eps is not None, "target-epsilon": eps or 1.0, "target-delta": DELTA}


def tag(eps: float | None) -> str:
    return "off" if eps is None else f"eps{eps:g}"


# ---------------------------------------------------------------- phase 1: tuning


def tune(plan: Plan, sweep_path: Path, jobs: int) -> dict[str, Any]:
    """Run (or resume) every tuning run of the plan; returns the sweep with the choices."""
    names = sorted(set(plan.datasets) | set(plan.strategies), key=list(DATASETS).index)
    old = json.loads(sweep_path.read_text()) if sweep_path.is_file() else {"runs": []}
    done = {r["key"]: r for r in old["runs"]}
    todo: list[dict[str, Any]] = []
    for name in names:
        for eps in plan.tune_regimes():
            for setting in plan.grid(name, eps is not None):
                for side in SIDES:
                    for seed in plan.tuning_seeds:
                        config = {
                            **plan.base(name),
                            **setting.overrides(),
                            **privacy(eps),
                            "seed": seed,
                        }
                        key = json.dumps([name, side, tag(eps), config], sort_keys=True)
                        if key not in done:
                            todo.append(
                                {
                                    "key": key,
                                    "dataset": name,
                                    "side": side,
                                    "regime": tag(eps),
                                    "setting": setting.__dict__,
                                    "seed": seed,
                                    "config": config,
                                    "reported-seeds": list(plan.seeds),
                                    "fraction": DATASETS[name].validation_fraction,
                                }
                            )
    todo.sort(key=lambda j: (j["dataset"] != "mnist", j["side"] != "peer"))  # longest first
    started = time.monotonic() - float(old.get("wall-s", 0.0))  # resumed: time so far counts
    print(f"tuning: {len(todo)} runs ({len(done)} already done), {jobs} at once", flush=True)
    runs = list(done.values())
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        for i, (job, scores) in enumerate(zip(todo, pool.map(tune_job, todo), strict=True), 1):
            runs.append({**{k: v for k, v in job.items() if k != "reported-seeds"}, **scores})
            print(
                f"  [{i}/{len(todo)}] {job['dataset']} {job['side']} {job['regime']} "
                f"{Setting(**job['setting']).label()} seed {job['seed']}: validation accuracy "
                f"{scores['accuracy']:.4f} ({scores['seconds']:.0f} s)",
                flush=True,
            )
            save_sweep(sweep_path, plan, runs, names, time.monotonic() - started)
    return save_sweep(sweep_path, plan, runs, names, time.monotonic() - started)


def save_sweep(
    path: Path, plan: Plan, runs: list[dict[str, Any]], names: list[str], wall: float
) -> dict[str, Any]:
    """The sweep log: every configuration tried, its scores, and the choice per row."""
    choices: dict[str, dict[str, Any]] = {}
    for name in names:
        for eps in plan.tune_regimes():
            settings = plan.grid(name, eps is not None)
            for side in SIDES:
                scores: dict[Setting, list[float]] = {s: [] for s in settings}
                for r in runs:
                    if (r["dataset"], r["side"], r["regime"]) == (name, side, tag(eps)):
                        setting = Setting(**r["setting"])
                        if setting in scores:
                            scores[setting].append(float(r["accuracy"]))
                complete = all(len(v) == len(plan.tuning_seeds) for v in scores.values())
                if complete:
                    chosen = choose(settings, scores)
                    choices[f"{name}|{side}|{'off' if eps is None else 'dp'}"] = {
                        "setting": chosen.__dict__,
                        "validation-accuracy": statistics.mean(scores[chosen]),
                        "tuned-at": tag(eps),
                    }
    sweep = {
        "protocol": protocol(plan),
        "wall-s": round(wall, 1),
        "choices": choices,
        "runs": sorted(runs, key=lambda r: r["key"]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sweep, indent=1) + "\n")
    path.with_suffix(".md").write_text(sweep_markdown(sweep))
    return sweep


def protocol(plan: Plan) -> dict[str, Any]:
    return {
        "tuning-seeds": list(plan.tuning_seeds),
        "reported-seeds": list(plan.seeds),
        "tuned-at": [tag(e) for e in plan.tune_regimes()],
        "reused-for": [tag(e) for e in sorted(plan.epsilons)[1:]],
        "grids": {
            name: {
                "dp": [s.__dict__ for s in plan.grid(name, True)],
                "off": [s.__dict__ for s in plan.grid(name, False)],
                "validation-fraction": DATASETS[name].validation_fraction,
                "base": {k: v for k, v in plan.base(name).items() if k != "data-path"},
            }
            for name in DATASETS
        },
        "score": "mean validation accuracy over the tuning seeds (final model)",
    }


# ---------------------------------------------------------------- phase 2: reported runs


@dataclass(frozen=True)
class Run:
    row: str  # a data set, or `<data set>-<strategy>`
    side: str
    eps: float | None
    seed: int
    config: dict[str, object]

    @property
    def name(self) -> str:
        return f"{self.row}-{self.side}-{tag(self.eps)}-s{self.seed}"


def reported_runs(plan: Plan, choices: dict[str, Any]) -> list[Run]:
    """Every reported run, once: a strategy row's FedAvg run is the main table's fedllm run at
    the same epsilon and seed when that data set is in the plan (the same config)."""
    runs: dict[str, Run] = {}

    def add(row: str, side: str, eps: float | None, seed: int, extra: dict[str, object]) -> None:
        setting = choices[f"{row}|{side}|{'off' if eps is None else 'dp'}"]["setting"]
        config = {
            **plan.base(row),
            **Setting(**setting).overrides(),
            **privacy(eps),
            **extra,
            "seed": seed,
        }
        strategy = str(extra.get("strategy", "fedavg"))
        run = Run(row if strategy == "fedavg" else f"{row}-{strategy}", side, eps, seed, config)
        runs.setdefault(run.name, run)

    for name in plan.datasets:
        for eps in plan.regimes():
            for seed in plan.seeds:
                for side in SIDES:
                    add(name, side, eps, seed, {})
    for name in plan.strategies:
        for strategy, extra in DATASETS[name].strategies.items():
            for seed in plan.seeds:
                add(name, "fedllm", min(plan.epsilons), seed, {} if strategy == "fedavg" else extra)
    return list(runs.values())


def command_for(run: Run, runs_dir: Path) -> list[str]:
    config = {**run.config, "out-dir": str(runs_dir), "run-name": run.name}
    if run.side == "fedllm":
        cmd = [str(ROOT / ".venv" / "bin" / "fedllm"), "simulate"]
    else:
        cmd = [sys.executable, str(BENCHMARKS / "peer" / "simulate.py")]
    for key, value in config.items():
        text = (
            json.dumps(value)
            if isinstance(value, str)
            else str(value).lower()
            if isinstance(value, bool)
            else repr(value)
        )
        cmd += ["-c", f"{key}={text}"]
    return cmd


def execute(run: Run, runs_dir: Path, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """One reported run in its own process; a run that finished before (resumed) is read
    back, with the wall time ``earlier`` recorded for it."""
    metrics_path = runs_dir / run.name / "metrics.json"
    log_path = runs_dir / "logs" / f"{run.name}.log"
    started = time.monotonic()
    wall = None
    resumed = metrics_path.is_file()
    if resumed:  # finished before: its wall time if it was recorded, else unknown
        wall = (earlier or {}).get("wall-s")
    else:
        if (runs_dir / run.name).exists():  # cut short: run it again
            shutil.rmtree(runs_dir / run.name)
        cmd = command_for(run, runs_dir)
        with log_path.open("w") as log:
            log.write(shlex.join(cmd) + "\n\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not metrics_path.is_file():
            raise RuntimeError(f"{run.name} failed (rc {proc.returncode}); see {log_path}")
    metrics = json.loads(metrics_path.read_text())
    final = metrics["final"]
    rounds = metrics["rounds"]
    # Seconds from the server's start to the end of each round: the first round also holds
    # the start-up of the simulated sites (Ray actors, imports, calibration).
    ends = [r.get("elapsed-s") for r in rounds]
    return {
        "row": run.row,
        "side": run.side,
        "target-epsilon": run.eps,
        "seed": run.seed,
        "run-name": run.name,
        "wall-s": wall if resumed else round(time.monotonic() - started, 1),
        "round-ends-s": ends if all(e is not None for e in ends) else None,
        "rounds": len(rounds),
        "accuracy": final["accuracy"],
        "auc": final.get("auc"),
        "epsilon": final.get("epsilon"),
        "epsilon-per-site": final.get("epsilon-per-site"),
        "printed-epsilon": final.get("printed-epsilon"),
        "printed-epsilon-per-site": final.get("printed-epsilon-per-site"),
    }


def report(plan: Plan, runs: list[Run], out: dict[str, Any], results: Path, jobs: int) -> None:
    runs_dir = Path(out["runs-dir"])
    (runs_dir / "logs").mkdir(parents=True, exist_ok=True)
    previous = (
        json.loads((results / "utility.json").read_text())
        if (results / "utility.json").is_file()
        else {"runs": []}
    )
    earlier = {r["run-name"]: r for r in previous["runs"]}
    started = time.monotonic() - float(previous.get("report-wall-s", 0.0))  # resumed
    done: list[dict[str, Any]] = []
    lock = threading.Lock()
    failures: list[str] = []

    # One queue for every worker (each takes the next run when it is free), the longest runs
    # first: MNIST, then the peer's (its DataLoader loop is the slower one).
    queue = sorted(
        enumerate(runs, 1),
        key=lambda x: (not x[1].row.startswith("mnist"), x[1].side != "peer", x[0]),
    )

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                i, run = queue.pop(0)
            try:
                result = execute(run, runs_dir, earlier.get(run.name))
            except RuntimeError as err:
                with lock:
                    failures.append(str(err))
                    print(f"  [{i}/{len(runs)}] {err}", flush=True)
                continue
            with lock:
                done.append(result)
                print(
                    f"  [{i}/{len(runs)}] {run.name}: accuracy {result['accuracy']:.4f}, "
                    f"epsilon {result['epsilon']}, printed {result['printed-epsilon']} "
                    f"({result['wall-s']} s, total {time.monotonic() - started:.0f} s)",
                    flush=True,
                )
                out["runs"] = sorted(done, key=lambda r: r["run-name"])
                out["report-wall-s"] = round(time.monotonic() - started, 1)
                out["complete"] = len(done) == len(runs)
                save(out, results)

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if failures:
        raise SystemExit(f"{len(failures)} reported run(s) failed: " + "; ".join(failures))


def save(out: dict[str, Any], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "utility.json").write_text(json.dumps(out, indent=1) + "\n")
    (results / "utility.md").write_text(markdown(out))


# ---------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--tasks",
        default="heart-disease,breast-cancer,mnist",
        help=f"of: {', '.join(DATASETS)}, strategies (heart disease and breast "
        "cancer with FedAvg, FedAdam, FedProx at the strictest epsilon)",
    )
    p.add_argument("--epsilons", default="1,3,8")
    p.add_argument("--no-dp-off", action="store_true", help="skip the rows without DP")
    p.add_argument("--seeds", default="0,1,2,3,4", help="reported seeds (never tuned on)")
    p.add_argument("--tuning-seeds", default="100,101")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="tuning processes and reported runs at once",
    )
    p.add_argument(
        "--pilot",
        action="store_true",
        help="seeds 0,1; at most 3 rounds; the first 2 settings of each "
        "grid; results in RESULTS/utility-pilot",
    )
    p.add_argument("--max-rounds", type=int, default=0, help="cap every data set's rounds")
    p.add_argument("--grid-limit", type=int, default=0, help="first N settings of each grid")
    p.add_argument("--results", default="", help="output folder (default: results/utility)")
    p.add_argument("--resume", action="store_true", help="keep finished runs in --results")
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    p.add_argument(
        "--estimate-from",
        default="",
        help="a results folder (e.g. a pilot's): estimate this plan's time, run nothing",
    )
    args = p.parse_args(argv)
    if args.pilot:
        args.seeds = "0,1" if args.seeds == "0,1,2,3,4" else args.seeds
        args.max_rounds = args.max_rounds or 3
        args.grid_limit = args.grid_limit or 2
    results = Path(
        args.results or (RESULTS / ("utility-pilot" if args.pilot else "utility"))
    ).resolve()
    if args.report_only:
        saved = json.loads((results / "utility.json").read_text())
        (results / "utility.md").write_text(markdown(saved))
        print((results / "utility.md").read_text())
        return 0
    named = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in named:
        if t not in DATASETS and t != "strategies":
            p.error(f"unknown task {t!r}; known: {', '.join(DATASETS)}, strategies")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    tuning_seeds = tuple(int(s) for s in args.tuning_seeds.split(","))
    if set(seeds) & set(tuning_seeds):
        p.error(f"tuning seeds {tuning_seeds} overlap the reported seeds {seeds}")
    plan = Plan(
        datasets=tuple(t for t in named if t in DATASETS),
        strategies=tuple(n for n in DATASETS if DATASETS[n].strategies)
        if "strategies" in named
        else (),
        epsilons=tuple(float(e) for e in args.epsilons.split(",") if e.strip()),
        dp_off=not args.no_dp_off,
        seeds=seeds,
        tuning_seeds=tuning_seeds,
        max_rounds=args.max_rounds,
        grid_limit=args.grid_limit,
    )
    if args.estimate_from:
        print(estimate(plan_summary(plan), Path(args.estimate_from).resolve(), args.jobs))
        return 0
    if results.exists() and any(results.iterdir()) and not args.resume:
        p.error(f"{results} holds results; pass --resume to continue them, or --results DIR")
    # A resumed run, once finished, is what the same command without --resume makes.
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
    command = "./scripts/setup.sh && .venv/bin/python benchmarks/utility.py" + (
        " " + shlex.join(given) if given else ""
    )
    preflight(plan)
    sweep = tune(plan, results / "utility-sweep.json", args.jobs)
    runs = reported_runs(plan, sweep["choices"])
    out: dict[str, Any] = {
        "command": command,
        "plan": plan_summary(plan),
        "datasets": {n: DATASETS[n].label for n in DATASETS},
        "choices": sweep["choices"],
        "tuning-wall-s": sweep["wall-s"],
        "runs-dir": str(results / "runs"),
        "complete": False,
        "runs": [],
    }
    print(f"reporting: {len(runs)} runs", flush=True)
    report(plan, runs, out, results, args.jobs)
    out["wall-s"] = round(out["tuning-wall-s"] + out["report-wall-s"], 1)
    save(out, results)
    print((results / "utility.md").read_text())
    return 0


def preflight(plan: Plan) -> None:
    """Every data set loads and every config parses before anything runs."""
    from fedllm.config import RunConfig
    from fedllm.errors import FedLLMError
    from fedllm.simulation import default_config
    from fedllm.tasks import load_federation

    for name in sorted(set(plan.datasets) | set(plan.strategies)):
        try:
            load_federation(RunConfig.from_flower({**default_config(), **plan.base(name)}))
        except FedLLMError as err:
            raise SystemExit(f"{name}: {err} (data folder: {DATA}; set FEDLLM_DATA)") from None


def plan_summary(plan: Plan) -> dict[str, Any]:
    return {
        "datasets": list(plan.datasets),
        "strategies": list(plan.strategies),
        "epsilons": list(plan.epsilons),
        "dp-off": plan.dp_off,
        "seeds": list(plan.seeds),
        "tuning-seeds": list(plan.tuning_seeds),
        "rounds": {n: plan.base(n)["num-server-rounds"] for n in DATASETS},
        "grid-sizes": {
            n: {"dp": len(plan.grid(n, True)), "off": len(plan.grid(n, False))} for n in DATASETS
        },
        "max-rounds": plan.max_rounds,
        "grid-limit": plan.grid_limit,
    }


if __name__ == "__main__":
    sys.exit(main())
