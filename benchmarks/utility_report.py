"""The utility benchmark's tables (``utility.md``, ``utility-sweep.md``) and its time estimate,
from the JSON that ``benchmarks/utility.py`` writes. Pure functions of that JSON."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

SIDES = ("fedllm", "peer")


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def _eps(eps: float | None) -> str:
    return "off" if eps is None else f"{eps:g}"


def _max(values: list[Any]) -> str:
    kept = [float(v) for v in values if v is not None]
    return f"{max(kept):.3f}" if kept else "-"


def rows(out: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per (row, epsilon): each side's runs summarized."""
    groups: dict[tuple[str, float | None], dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for run in out["runs"]:
        groups[(run["row"], run["target-epsilon"])][run["side"]].append(run)
    order = list(out["datasets"])

    def key(item: tuple[str, float | None]) -> tuple[int, str, float]:
        row, eps = item
        base = next((d for d in order if row == d or row.startswith(d + "-")), row)
        rank = order.index(base) if base in order else len(order)
        return (rank, row, -1.0 if eps is None else eps)

    table = []
    for row, eps in sorted(groups, key=key):
        sides = groups[(row, eps)]
        entry: dict[str, Any] = {"row": row, "target-epsilon": eps}
        for side in SIDES:
            runs = sides.get(side, [])
            entry[side] = {
                "seeds": sorted(r["seed"] for r in runs),
                "accuracy": [r["accuracy"] for r in runs],
                "auc": [r["auc"] for r in runs if r.get("auc") is not None],
                "epsilon": [r["epsilon"] for r in runs],
                "printed-epsilon": [r.get("printed-epsilon") for r in runs],
                "wall-s": [r["wall-s"] for r in runs if r.get("wall-s") is not None],
            }
        table.append(entry)
    return table


def markdown(out: dict[str, Any]) -> str:
    plan = out["plan"]
    pilot = bool(plan.get("max-rounds") or plan.get("grid-limit"))
    lines = ["# Utility under differential privacy: fedllm beside plain Flower + Opacus", ""]
    if pilot:
        lines += [
            f"**PILOT, not results**: at most {plan['max-rounds'] or 'all'} rounds, the first "
            f"{plan['grid-limit'] or 'all'} settings of each grid, seeds "
            f"{', '.join(map(str, plan['seeds']))}. It shows the code paths work end to end "
            "and what each run costs; its accuracies are not the benchmark's.",
            "",
        ]
    if not out.get("complete"):
        lines += ["**PARTIAL: only the finished runs are in this table.**", ""]
    lines += ["Made by:", "", "```", str(out["command"]), "```", ""]
    wall = out.get("wall-s")
    lines += [
        f"Time: tuning {out['tuning-wall-s'] / 60:.1f} min, reported runs "
        f"{out.get('report-wall-s', 0) / 60:.1f} min"
        + (f", total {wall / 60:.1f} min" if wall else "")
        + " (2 shared CPU cores).",
        "",
        "Each cell: final-round accuracy on the pooled held-out rows (MNIST: t10k), mean +- std "
        f"over the reported seeds ({', '.join(map(str, plan['seeds']))}), each run the real "
        "product in its own process: `fedllm simulate` (fedllm) or "
        "`benchmarks/peer/simulate.py` (the peer: Flower's Opacus example as a Flower App on "
        "Flower's simulation engine). Epsilon (delta 1e-5, PRV): the largest over sites and "
        "seeds; fedllm's is what each run reported (cumulative over the run); the peer's true "
        "one composes every round of a site, and *printed* is what the example prints: its "
        "fresh engine's epsilon for the last round alone.",
        "",
        "| data set | target eps | fedllm | peer | fedllm AUC | peer AUC | fedllm eps | peer eps "
        "(true) | peer eps printed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    strategy_rows = []
    for entry in rows(out):
        if entry["row"] not in out["datasets"]:
            strategy_rows.append(entry)
            continue
        f, p = entry["fedllm"], entry["peer"]
        lines.append(
            f"| {entry['row']} | {_eps(entry['target-epsilon'])} | {mean_std(f['accuracy'])} | "
            f"{mean_std(p['accuracy'])} | {mean_std(f['auc'])} | {mean_std(p['auc'])} | "
            f"{_max(f['epsilon'])} | {_max(p['epsilon'])} | {_max(p['printed-epsilon'])} |"
        )
    if strategy_rows or plan.get("strategies"):
        lines += [
            "",
            f"Server strategies at epsilon {min(plan['epsilons']):g} (fedllm; the sites' "
            "setting is the data set's fedllm choice; FedAdam's server rate 0.1 and FedProx's "
            "mu 0.1 untuned):",
            "",
            "| data set | FedAvg | FedAdam | FedProx |",
            "|---|---|---|---|",
        ]
        by_row = {(e["row"], e["target-epsilon"]): e for e in rows(out)}
        for name in plan.get("strategies", []):
            eps = min(plan["epsilons"])
            cells = [
                mean_std(by_row[(row, eps)]["fedllm"]["accuracy"]) if (row, eps) in by_row else "-"
                for row in (name, f"{name}-fedadam", f"{name}-fedprox")
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Chosen settings (`utility-sweep.md` has every configuration tried)",
        "",
        "| data set | side | tuned at | learning rate | batch | clip | validation accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, choice in sorted(out["choices"].items()):
        name, side, regime = key.split("|")
        s = choice["setting"]
        clip = s["max_grad_norm"] if regime == "dp" else "-"
        lines.append(
            f"| {name} | {side} | {choice['tuned-at']} | {s['learning_rate']:g} | "
            f"{s['batch_size']} | {clip} | {choice['validation-accuracy']:.4f} |"
        )
    lines += [
        "",
        "## Time per run",
        "",
        "| row | side | runs | mean wall | |",
        "|---|---|---|---|---|",
    ]
    walls: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in out["runs"]:
        if run.get("wall-s") is not None:
            walls[(run["row"], run["side"])].append(run["wall-s"])
    for (row, side), values in sorted(walls.items()):
        lines.append(f"| {row} | {side} | {len(values)} | {statistics.mean(values):.0f} s | |")
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """## Protocol

- Both sides are tuned alike (`benchmarks/tuning.py`): the same grid per data set and privacy
  regime, the same tuning seeds, the same validation rows, the same in-process FedAvg, each
  side with its own local training (fedllm's `train_local`; the peer's `train_round`, which its
  ClientApp calls). DP rows are tuned at the strictest epsilon and that choice is reused for the
  others; the rows without DP are tuned on their own grid (no clipping).
- Validation rows are carved out of each site's training rows, only from rows that no reported
  seed holds out (the split moves with the seed); per-site scaling is refitted without them.
  Tuning seeds are never reported; reported seeds are never tuned on.
- Tuning on the sites' data is outside the reported epsilon: each configuration tried is
  another look at the same records. Papernot & Steinke (ICLR 2022, "Hyperparameter Tuning with
  Renyi Differential Privacy") show what accounting it would take (e.g. a random number of
  private tuning runs); these tables do not do it, for either side.
- The peer reuses fedllm's partition, preprocessing, model, loss and evaluation, so only the
  training path differs: a DataLoader, a fresh `PrivacyEngine` per round (hooks, Poisson
  sampling), Opacus's own noise calibration for the whole planned run (the same target and
  accountant), plain SGD and Flower's `FedAvg`; no secure aggregation. fedllm runs with its
  defaults (SecAgg+, encrypted checkpoints).
"""


def sweep_markdown(sweep: dict[str, Any]) -> str:
    proto = sweep["protocol"]
    lines = [
        "# Utility benchmark: the tuning sweep",
        "",
        f"Tuning seeds {proto['tuning-seeds']} (reported seeds {proto['reported-seeds']} are "
        f"never tuned on); tuned at {', '.join(proto['tuned-at'])}, the DP choice reused for "
        f"{', '.join(proto['reused-for']) or 'nothing else'}. Score: {proto['score']}, on "
        f"validation rows (see `benchmarks/tuning.py`). Wall time {sweep['wall-s'] / 60:.1f} min.",
        "",
        "| data set | regime | setting | fedllm validation accuracy | peer validation accuracy |",
        "|---|---|---|---|---|",
    ]
    cells: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for run in sweep["runs"]:
        s = run["setting"]
        label = f"lr {s['learning_rate']:g}, batch {s['batch_size']}" + (
            f", clip {s['max_grad_norm']:g}" if run["regime"] != "off" else ""
        )
        cells[(run["dataset"], run["regime"], label)][run["side"]].append(run["accuracy"])
    chosen = {
        (k.split("|")[0], k.split("|")[1], c["tuned-at"]): c["setting"]
        for k, c in sweep["choices"].items()
    }
    for (name, regime, label), sides in cells.items():
        marks = []
        for side in SIDES:
            s = chosen.get((name, side, regime))
            hit = (
                s is not None
                and label.startswith(f"lr {s['learning_rate']:g}, batch {s['batch_size']}")
                and (regime == "off" or label.endswith(f"clip {s['max_grad_norm']:g}"))
            )
            values = sides.get(side, [])
            text = mean_std(values) + (f" ({', '.join(f'{v:.3f}' for v in values)})")
            marks.append(f"**{text}**" if hit else text)
        lines.append(f"| {name} | {regime} | {label} | {marks[0]} | {marks[1]} |")
    lines += ["", "Bold: the chosen setting of each side."]
    return "\n".join(lines) + "\n"


def estimate(plan: dict[str, Any], measured: Path, jobs: int) -> str:
    """This plan's time, from a finished (pilot) run's per-round costs: a reported run as its
    start-up and first round plus (rounds - 1) later rounds, a tuning run as rounds x its
    per-round seconds, each by data set, side and DP on/off."""
    out = json.loads((measured / "utility.json").read_text())
    sweep = json.loads((measured / "utility-sweep.json").read_text())
    start: dict[tuple[str, str, bool], list[float]] = defaultdict(list)
    per_round: dict[tuple[str, str, bool], list[float]] = defaultdict(list)
    for run in out["runs"]:
        ends = run.get("round-ends-s")
        if not ends or len(ends) < 2 or run.get("wall-s") is None:
            continue
        base = next(d for d in out["datasets"] if run["row"] == d or run["row"].startswith(d))
        k = (base, run["side"], run["target-epsilon"] is not None)
        each = (ends[-1] - ends[0]) / (len(ends) - 1)  # a round after the first
        per_round[k].append(each)
        start[k].append(run["wall-s"] - each * (len(ends) - 1))  # start-up and the first round
    tune_round: dict[tuple[str, str, bool], list[float]] = defaultdict(list)
    for run in sweep["runs"]:
        k = (run["dataset"], run["side"], run["regime"] != "off")
        tune_round[k].append(run["seconds"] / run["config"]["num-server-rounds"])

    def cost(table: dict[tuple[str, str, bool], list[float]], k: tuple[str, str, bool]) -> float:
        if not table.get(k):
            raise SystemExit(f"{measured} has no measurement for {k}: run a pilot with it")
        return statistics.mean(table[k])

    tuning = 0.0
    report = {"mnist": 0.0, "other": 0.0}
    lines = []
    eps_list = plan["epsilons"]
    tuned = ([False] if plan["dp-off"] else []) + ([True] if eps_list else [])
    regimes = ([False] if plan["dp-off"] else []) + [True] * len(eps_list)
    for name in plan["datasets"]:
        rounds = plan["rounds"][name]
        for side in SIDES:
            for dp in tuned:
                size = plan["grid-sizes"][name]["dp" if dp else "off"]
                t = size * len(plan["tuning-seeds"]) * rounds * cost(tune_round, (name, side, dp))
                tuning += t
            for dp in regimes:
                each = cost(start, (name, side, dp)) + (rounds - 1) * cost(
                    per_round, (name, side, dp)
                )
                report["mnist" if name == "mnist" else "other"] += each * len(plan["seeds"])
                lines.append(
                    f"  {name:14s} {side:6s} {'DP ' if dp else 'off'}: {each:6.0f} s a run"
                )
    for name in plan["strategies"]:
        rounds = plan["rounds"][name]
        each = cost(start, (name, "fedllm", True)) + rounds * cost(
            per_round, (name, "fedllm", True)
        )
        extra = 2 if name in plan["datasets"] else 3  # FedAvg is the main table's run
        report["other"] += each * extra * len(plan["seeds"])
    lanes = sum(report.values()) / max(1, jobs)  # one queue: each worker takes the next run
    total = tuning / max(1, jobs) + lanes
    return "\n".join(
        [
            f"estimate from {measured} (its per-round costs, under its load):",
            *lines,
            f"  tuning: {tuning / 60:.0f} min of runs, {tuning / max(1, jobs) / 60:.0f} min "
            f"with {jobs} at once",
            f"  reported runs: MNIST {report['mnist'] / 60:.0f} min, the rest "
            f"{report['other'] / 60:.0f} min; {lanes / 60:.0f} min in "
            f"{jobs} at once",
            f"  total: about {total / 3600:.1f} h",
        ]
    )
