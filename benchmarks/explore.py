"""In-process FedAvg sweep (no Ray) mirroring server/ + clients/ logic, for exploration.

It scores on the held-out rows a reported run is scored on, so nothing it finds may be
reported as a result: the utility table's tuning is ``benchmarks/tuning.py`` (validation rows
carved from the sites' training rows, the same protocol for fedllm and the peer).

Usage: python benchmarks/explore.py TASK 'json-list-of-overrides' [--seeds 0,1,2] [--eps 1]
Each override dict is merged over pyproject defaults + task defaults. Prints one line per config.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path

import torch

from fedllm.config import RunConfig
from fedllm.privacy import DPEvent, DPParams, DPSchedule, calibrate_noise, epsilon
from fedllm.tasks import get_task, load_federation
from fedllm.training import LocalTraining, evaluate, train_local

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
TASK_BASE = {
    "breast-cancer": {
        "task": "breast-cancer",
        "partitioner": "dirichlet",
        "dirichlet-alpha": 1.0,
        "num-sites": 4,
        "num-server-rounds": 10,
    },
    "heart-disease": {
        "task": "heart-disease",
        "data-path": str(ROOT / "../shared/data/heart_disease"),
        "partitioner": "natural",
        "num-sites": 4,
        "num-server-rounds": 20,
    },
    "mnist": {
        "task": "mnist",
        "data-path": str(ROOT / "../shared/data/mnist"),
        "partitioner": "iid",
        "num-sites": 2,
        "num-server-rounds": 5,
    },
}


@functools.cache
def _sigma(eps, delta, q, steps_per_round, rounds, accountant):
    return calibrate_noise(eps, delta, DPSchedule(q, steps_per_round, rounds), accountant)


def run(cfg_dict: dict, server_lr: float = 1.0, server_momentum: float = 0.0) -> dict:
    cfg = RunConfig.from_flower(cfg_dict)
    task = get_task(cfg.task)
    fed = load_federation(cfg)
    model = task.build_model(cfg, fed.input_shape)
    spends: list[list[DPEvent]] = [[] for _ in fed.sites]
    velocity = None
    for rnd in range(1, cfg.num_server_rounds + 1):
        global_state = copy.deepcopy(model.state_dict())
        agg = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        total = 0
        for i, site in enumerate(fed.sites):
            local = task.build_model(cfg, fed.input_shape)
            local.load_state_dict(global_state)
            dp = None
            if cfg.dp:
                s = DPSchedule.for_site(
                    len(site.train), cfg.batch_size, cfg.local_epochs, cfg.num_server_rounds
                )
                sigma = _sigma(
                    cfg.target_epsilon,
                    cfg.target_delta,
                    s.sample_rate,
                    s.steps_per_round,
                    s.rounds,
                    cfg.accountant,
                )
                dp = DPParams(sigma, cfg.max_grad_norm, cfg.accountant)
            settings = LocalTraining(
                cfg.local_epochs,
                cfg.batch_size,
                cfg.learning_rate,
                seed=cfg.seed * 1_000_003 + rnd * 1_009 + i,
            )
            res = train_local(task, local, site.train, settings, dp)
            if cfg.dp:
                spends[i].extend(res.events)
            n = len(site.train)
            total += n
            for k, v in local.state_dict().items():
                agg[k] += v.double() * n
        new = {k: (v / total) for k, v in agg.items()}
        if server_lr == 1.0 and server_momentum == 0.0:
            model.load_state_dict({k: v.float() for k, v in new.items()})
        else:  # FedAvgM-style: delta = avg - global
            delta = {k: new[k] - global_state[k].double() for k in new}
            if velocity is None:
                velocity = delta
            else:
                velocity = {k: server_momentum * velocity[k] + delta[k] for k in delta}
            model.load_state_dict(
                {k: (global_state[k].double() + server_lr * velocity[k]).float() for k in new}
            )
    scores = evaluate(task, model, fed.central_test)
    scores["epsilon"] = (
        max(epsilon(s, cfg.target_delta, cfg.accountant) for s in spends) if cfg.dp else None
    )
    return scores


def _pool_scaling() -> None:
    from fedllm.data import tabular as data_tabular
    from fedllm.tasks import tabular as task_tabular

    pooled: dict[str, object] = {}
    load = task_tabular.TabularTask.load_source

    def load_source(self, cfg, path):  # type: ignore[no-untyped-def]
        source = load(self, cfg, path)
        pooled["x"] = source.x
        return source

    task_tabular.TabularTask.load_source = load_source  # type: ignore[method-assign]
    task_tabular.TabularTask.preprocess = (  # type: ignore[method-assign]
        lambda self: lambda _x: data_tabular.Standardizer.fit(pooled["x"])
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task")
    p.add_argument("grid", help="JSON list of override dicts")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eps", default="1")
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--server-momentum", type=float, default=0.0)
    p.add_argument(
        "--pooled-scaling",
        action="store_true",
        help="what-if: standardize tabular features with statistics of ALL rows "
        "(an oracle / public-scaling stand-in) instead of per-site statistics",
    )
    a = p.parse_args()
    if a.pooled_scaling:
        _pool_scaling()
    grid = json.loads(a.grid)
    seeds = [int(s) for s in a.seeds.split(",")]
    for eps in a.eps.split(","):
        for over in grid:
            t0 = time.time()
            accs, aucs, epss = [], [], []
            for seed in seeds:
                d = {**DEFAULTS, **TASK_BASE[a.task], **over, "seed": seed}
                if eps == "off":
                    d["dp"] = False
                else:
                    d["target-epsilon"] = float(eps)
                r = run(d, a.server_lr, a.server_momentum)
                accs.append(r["accuracy"])
                aucs.append(r.get("auc", float("nan")))
                epss.append(r["epsilon"] or 0.0)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(
                f"eps={eps} {json.dumps(over)} acc {statistics.mean(accs):.4f}+-{sd:.4f} "
                f"auc {statistics.mean(aucs):.4f} maxeps {max(epss):.3f} "
                f"accs {[round(x, 3) for x in accs]} ({time.time() - t0:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
