"""What protecting the example count costs: utility at epsilon 1 under three ways of handling
a site's count n (in-process FedAvg over the library's own training code, as explore.py does):

- ``exact-n``: the schedule and the averaging weight from the exact n, epsilon accounted for
  add/remove-one (what fedllm did before: n in the clear, so the claim did not hold);
- ``noised-count``: what fedllm does: n released once with Gaussian noise (std
  `count-noise`), the schedule, normalizer and weight from the released count, the DP-SGD
  noise calibrated for the count's release and the rounds together;
- ``replace-one``: the exact n in the clear, epsilon accounted for replace-one adjacency
  (dp-accounting's PLD, `REPLACE_ONE`), which needs about twice the noise.

    .venv/bin/python benchmarks/adjacency.py --seeds 0,1,2,3,4 --repeats 2

Prints a Markdown table (mean +- std of the final central accuracy over seeds x repeats) and
the noise multipliers; writes results/adjacency.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.train import release_plan
from fedllm.config import RunConfig
from fedllm.privacy import DPParams, DPSchedule
from fedllm.privacy.accounting import calibrate_plan
from fedllm.privacy.calibration import smallest_noise
from fedllm.privacy.releases import release_count
from fedllm.simulation import default_config
from fedllm.tasks import get_task, load_federation
from fedllm.training import LocalTraining, evaluate, train_local

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("exact-n", "noised-count", "replace-one")
TASKS: dict[str, dict[str, Any]] = {  # as benchmarks/utility.py runs them at epsilon 1
    "breast-cancer": {"task": "breast-cancer", "partitioner": "dirichlet", "num-sites": 4,
                      "num-server-rounds": 10, "batch-size": 128, "learning-rate": 4.0},
    "heart-disease": {"task": "heart-disease", "partitioner": "natural", "num-sites": 4,
                      "num-server-rounds": 20, "batch-size": 64, "learning-rate": 1.0},
}  # fmt: skip


@functools.cache
def _replace_one_sigma(target: float, delta: float, schedule: DPSchedule) -> float:
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import privacy_loss_distribution as pld

    def eps(sigma: float) -> float:
        unit = pld.from_gaussian_mechanism(
            standard_deviation=sigma,
            sampling_prob=schedule.sample_rate,
            value_discretization_interval=1e-3,
            neighboring_relation=NeighboringRelation.REPLACE_ONE,
        )
        return float(unit.self_compose(schedule.total_steps).get_epsilon_for_delta(delta))

    return smallest_noise(eps, target, "replace-one")


def _site_plan(cfg: RunConfig, n: int, mode: str, rng: np.random.Generator) -> tuple[int, float]:
    """(the count the schedule and weight come from, the DP-SGD noise multiplier)."""
    if mode == "noised-count":
        released = release_count(n, cfg.count_noise, rng)
        plan = release_plan(cfg, released)
        return released, calibrate_plan(cfg.target_epsilon, cfg.target_delta, plan, cfg.accountant)
    plan = release_plan(cfg, n)
    if mode == "exact-n":
        return n, calibrate_plan(
            cfg.target_epsilon, cfg.target_delta, type(plan)(plan.schedule), cfg.accountant
        )
    return n, _replace_one_sigma(cfg.target_epsilon, cfg.target_delta, plan.schedule)


def run(cfg: RunConfig, mode: str, rng: np.random.Generator) -> tuple[float, list[float]]:
    """Final central accuracy of one FedAvg run, and each site's noise multiplier."""
    task = get_task(cfg.task)
    fed = load_federation(cfg)
    model = task.build_model(cfg, fed.input_shape)
    plans = [_site_plan(cfg, len(site.train), mode, rng) for site in fed.sites]
    for rnd in range(1, cfg.num_server_rounds + 1):
        start = copy.deepcopy(model.state_dict())
        total, summed = 0.0, {k: torch.zeros_like(v, dtype=torch.float64) for k, v in start.items()}
        for i, (site, (count, sigma)) in enumerate(zip(fed.sites, plans, strict=True)):
            local = task.build_model(cfg, fed.input_shape)
            local.load_state_dict(start)
            settings = LocalTraining(
                cfg.local_epochs,
                cfg.batch_size,
                cfg.learning_rate,
                seed=cfg.seed * 1_000_003 + rnd * 1_009 + i,
                schedule_examples=count,
            )
            train_local(task, local, site.train, settings, DPParams(sigma, cfg.max_grad_norm))
            total += count
            for k, v in local.state_dict().items():
                summed[k] += v.double() * count
        model.load_state_dict({k: (v / total).float() for k, v in summed.items()})
    return evaluate(task, model, fed.central_test)["accuracy"], [s for _, s in plans]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--repeats", type=int, default=2, help="runs per seed (fresh DP noise)")
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.monotonic()
    out: dict[str, Any] = {"seeds": seeds, "repeats": args.repeats, "rows": []}
    for name in args.tasks.split(","):
        values = {**default_config(ROOT), **TASKS[name], "accountant": "prv"}
        if name == "heart-disease":
            values["data-path"] = str(Path(args.data) / "heart_disease")
        for mode in MODES:
            accuracy, sigmas = [], []
            for seed in seeds:
                cfg = RunConfig.from_flower({**values, "seed": seed})
                for _ in range(args.repeats):
                    acc, site_sigmas = run(cfg, mode, np.random.default_rng())
                    accuracy.append(acc)
                    sigmas.extend(site_sigmas)
            row = {
                "task": name,
                "mode": mode,
                "accuracy-mean": statistics.mean(accuracy),
                "accuracy-std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                "sigma-mean": statistics.mean(sigmas),
                "runs": len(accuracy),
            }
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    out["wall-s"] = round(time.monotonic() - started, 1)
    lines = [
        "# What protecting the example count costs (epsilon 1, PRV, delta 1e-5)",
        "",
        f"`.venv/bin/python benchmarks/adjacency.py --seeds {args.seeds} --repeats "
        f"{args.repeats}`: in-process FedAvg over fedllm's training code, final central "
        f"accuracy, mean +- std over {len(seeds)} seeds x {args.repeats} runs (fresh DP noise "
        f"each); wall {out['wall-s']} s.",
        "",
        "| task | exact n (add/remove, not true) | noised count (fedllm) | replace-one |",
        "|---|---|---|---|",
    ]
    for name in args.tasks.split(","):
        cells = []
        for mode in MODES:
            row = next(r for r in out["rows"] if r["task"] == name and r["mode"] == mode)
            cells.append(
                f"{row['accuracy-mean']:.3f} +- {row['accuracy-std']:.3f} "
                f"(sigma {row['sigma-mean']:.2f})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "adjacency.md").write_text("\n".join(lines) + "\n")
    (results / "adjacency.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
