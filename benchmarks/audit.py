"""Privacy audit benchmark: the empirical epsilon lower bound of each attacker (`fedllm audit`,
one-run auditing, 95% confidence over both analyses: Steinke et al. 2023 and the f-DP analysis
of Mahloujifar et al. 2024) beside the epsilon the run reports, at several target epsilons,
without DP, and with reproducible (public) noise.

Every setting is one `fedllm audit` subprocess (a real simulation: ServerApp, ClientApp,
DP-SGD with the sites' own noise, canaries planted at site 0), whose audit.json is read back.
Writes results/audit.json, results/audit.md and results/audit.png.

    .venv/bin/python benchmarks/audit.py                          # breast cancer and MNIST
    .venv/bin/python benchmarks/audit.py --tasks breast-cancer --epsilons 1,8

The data sets live in ../shared/data beside the checkout, or in $FEDLLM_DATA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDLLM_DATA", ROOT / ".." / "shared" / "data")).resolve()
RESULTS = ROOT / "benchmarks" / "results"
ATTACKERS = "black-box,coordinator,seed-knowing"

# Each task's own defaults (README, "Task defaults"); secure aggregation off, so the coordinator
# sees the audited site's own updates (the strongest view a server can have).
TASKS: dict[str, dict[str, object]] = {
    # A wide MLP: 1000 Dirac canaries need 1000 coordinates (logistic regression has 31).
    "breast-cancer": {"task": "breast-cancer", "hidden-units": 1024},
    # 2 IID sites, 3 rounds: the utility benchmark's MNIST setting, to keep the runs short.
    "mnist": {
        "task": "mnist",
        "data-path": str(DATA / "mnist"),
        "partitioner": "iid",
        "num-sites": 2,
        "num-server-rounds": 3,
    },
}
COMMON: dict[str, object] = {"secagg": False, "checkpoint": "off"}
# Without DP, MNIST's learning rate 4.0 (tuned for clipped, noised gradients) diverges; the
# utility benchmark's DP-off row uses 0.5.
NO_DP: dict[str, dict[str, object]] = {"mnist": {"learning-rate": 0.5}}
# Input canaries are training rows: 500 of them next to a breast-cancer site's ~114 rows would
# change its sampling rate and schedule, so there the black box gets a run of its own.
SEPARATE_BLACK_BOX = {"breast-cancer"}


def settings(epsilons: list[float], task: str) -> list[tuple[str, dict[str, object]]]:
    """(label, overrides): each epsilon with secret noise, eps 1 with public noise, no DP."""
    rows: list[tuple[str, dict[str, object]]] = [
        (f"epsilon {e:g}", {"target-epsilon": e}) for e in epsilons
    ]
    rows.append(
        ("epsilon 1, reproducible-noise", {"target-epsilon": 1.0, "reproducible-noise": True})
    )
    rows.append(("no DP (no clipping, no noise)", {"dp": False, **NO_DP.get(task, {})}))
    return rows


def toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def audit(
    out: Path, name: str, overrides: dict[str, object], canaries: int, attackers: str
) -> dict[str, Any]:
    args = [a for k, v in overrides.items() for a in ("-c", f"{k}={toml(v)}")]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fedllm.cli", "audit", *args, "-c", f'out-dir="{out}"',
         "-c", f'run-name="{name}"', "--canaries", str(canaries), "--attackers", attackers],
        cwd=ROOT, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    path = out / name / "audit.json"
    if not path.is_file():
        print(f"audit {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", flush=True)
        raise AuditFailed(name)
    result: dict[str, Any] = json.loads(path.read_text())
    result["exit-code"] = proc.returncode
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


class AuditFailed(RuntimeError):
    """An audit that wrote no audit.json (its output was printed)."""


def cell(attacker: dict[str, Any]) -> str:
    """``steinke / f-dp`` bounds, the headline's (correct/guesses) after them."""
    analyses = attacker["analyses"]
    bounds = " / ".join(
        f"{analyses[k]['epsilon-lower-bound']:.2f}" if k in analyses else "-"
        for k in ("steinke", "f-dp")
    )
    return f"{bounds} ({attacker['correct']}/{attacker['guesses']})"


def family(row: dict[str, Any]) -> str:
    """The f-DP analysis's family in the row's run (and in the black box's, where it ran apart
    and differs: its rows can make the site sample)."""
    main = row["f-dp"]["family"] or "- (no DP)"
    alone = row.get("black-box-run", {}).get("f-dp", {}).get("family") or "- (no DP)"
    return main if alone == main or "black-box-run" not in row else f"{main}; black box: {alone}"


def table(rows: list[dict[str, Any]]) -> str:
    names = ATTACKERS.split(",")
    lines = [
        "| task | setting | reported epsilon | f-DP family | "
        + " | ".join(f"{n}: Steinke / f-DP" for n in names)
        + " | strongest (analysis) | exit | time |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for row in rows:
        reported = row["reported-epsilon"]
        best = row["strongest"]
        lines.append(
            f"| {row['task']} | {row['setting']} | "
            f"{'-' if reported is None else f'{reported:.3f}'} | "
            f"{family(row)} | "
            + " | ".join(cell(row["attackers"][n]) for n in names)
            + f" | {best['epsilon-lower-bound']:.2f} ({best['attacker']}, {best['analysis']})"
            + f" | {row['exit-code']} | {row['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = [r for r in rows if r["task"] == task and r["reported-epsilon"] is not None]
        for marker, name in zip("os^", ATTACKERS.split(","), strict=True):
            xs = [r["reported-epsilon"] for r in mine]
            ys = [r["attackers"][name]["epsilon-lower-bound"] for r in mine]
            points = ax.scatter(xs, ys, marker=marker, label=f"{name} (headline)")
            analyses = [r["attackers"][name]["analyses"] for r in mine]
            steinke = [a["steinke"]["epsilon-lower-bound"] for a in analyses]
            edge = points.get_facecolor()
            ax.scatter(
                xs, steinke, marker=marker, facecolors="none", edgecolors=edge,
                label=f"{name} (Steinke's analysis)",
            )  # fmt: skip
        top = max([r["reported-epsilon"] for r in mine] + [1.0])
        ax.plot([0, top], [0, top], "k--", linewidth=0.8, label="bound = reported")
        for r in mine:
            if r["reproducible-noise"]:
                ax.annotate(
                    "reproducible noise",
                    (r["reported-epsilon"], r["attackers"]["seed-knowing"]["epsilon-lower-bound"]),
                    fontsize=7,
                )
        ax.set_xlabel("reported epsilon (accountant)")
        ax.set_ylabel("empirical lower bound (95%, filled: headline)")
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_setting(
    out: Path, name: str, task: str, config: dict[str, object], m: int
) -> dict[str, Any]:
    """One setting: one audit, or (breast cancer) the gradient attackers and the black box in
    runs of their own, merged."""
    if task not in SEPARATE_BLACK_BOX:
        return audit(out, name, config, m, ATTACKERS)
    result = audit(out, name, config, m, "coordinator,seed-knowing")
    alone = audit(out, f"{name}-bb", config, m, "black-box")
    result["attackers"].update(alone["attackers"])
    result["black-box-run"] = {
        k: alone[k] for k in ("reported-epsilon", "exit-code", "seconds", "f-dp")
    }
    result["seconds"] += alone["seconds"]
    result["exit-code"] = max(result["exit-code"], alone["exit-code"])
    bounds = {n: a["epsilon-lower-bound"] for n, a in result["attackers"].items()}
    strongest = max(bounds, key=lambda n: bounds[n])
    result["strongest"] = {
        "attacker": strongest,
        "epsilon-lower-bound": bounds[strongest],
        "analysis": result["attackers"][strongest]["analysis"],
    }
    return result


def write(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Results so far: audit.json, audit.md, audit.png (rewritten after every setting)."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "load-after": os.getloadavg()}
    (out / "audit.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "audit.md").write_text(
        f"Lower bounds at 95% over both analyses (Steinke et al. 2023 / f-DP of Mahloujifar "
        f"et al. 2024; the headline's correct/guesses), {meta['canaries']} canaries of each "
        f"kind at site 0; load average before {meta['load-before'][0]:.1f}, after "
        f"{meta['load-after'][0]:.1f}. Failed settings: {meta['failed'] or 'none'}.\n\n"
        + table(rows)
        + "\n"
    )
    if rows:
        plot(rows, out / "audit.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="breast-cancer,mnist")
    parser.add_argument("--epsilons", default="1,4,8")
    parser.add_argument("--canaries", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "canaries": args.canaries,
        "load-before": os.getloadavg(),
        "failed": [],
    }
    with tempfile.TemporaryDirectory(prefix="fedllm-audit-") as tmp:
        for task in args.tasks.split(","):
            for i, (label, overrides) in enumerate(settings(epsilons, task)):
                config = {**COMMON, **TASKS[task], **overrides}
                try:
                    result = run_setting(Path(tmp), f"{task}-{i}", task, config, args.canaries)
                except AuditFailed:
                    meta["failed"].append(f"{task}: {label}")
                    continue
                result.update(task=task, setting=label)
                result.pop("run", None)
                rows.append(result)
                best = result["strongest"]
                print(
                    f"{task:<14} {label:<32} reported {result['reported-epsilon']}  strongest "
                    f"{best['attacker']} {best['epsilon-lower-bound']:.3f} ({best['analysis']})  "
                    f"({result['seconds']} s)",
                    flush=True,
                )
                write(args.out, rows, meta)
    write(args.out, rows, meta)
    print(table(rows))


if __name__ == "__main__":
    main()
