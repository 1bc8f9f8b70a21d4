"""How much the quickstart's accuracy moves between runs: the main job (`fedllm simulate` with
its defaults, the same seed every time) run ``--draws`` times. Only the DP noise and Poisson
sampling differ between draws: they come from fresh OS entropy, as they must for the privacy
claim, so no single run's accuracy is *the* quickstart's accuracy.

    .venv/bin/python benchmarks/quickstart_draws.py            # 5 draws, ~1 min each on 2 cores

Writes results/quickstart_draws.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def draw(out_dir: Path, name: str) -> dict[str, float]:
    """One quickstart run (the defaults), its final accuracy, AUC and largest site epsilon."""
    cmd = [
        str(ROOT / ".venv" / "bin" / "fedllm"),
        "simulate",
        "-c",
        f'out-dir="{out_dir}"',
        "-c",
        f'run-name="{name}"',
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"draw {name} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}")
    final = json.loads((out_dir / name / "metrics.json").read_text())["final"]
    return {
        "accuracy": float(final["accuracy"]),
        "auc": float(final["auc"]),
        "epsilon": float(final["epsilon"]),
        "wall-s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--draws", type=int, default=5)
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error(f"--draws must be at least 2 to show a spread, got {args.draws}")
    draws = []
    with tempfile.TemporaryDirectory(prefix="quickstart-draws-") as tmp:
        for i in range(args.draws):
            draws.append(draw(Path(tmp), f"draw-{i}"))
            print(f"draw {i}: {draws[-1]}", flush=True)
    acc = [d["accuracy"] for d in draws]
    out = {
        "command": ".venv/bin/python benchmarks/quickstart_draws.py"
        + (f" --draws {args.draws}" if args.draws != 5 else ""),
        "draws": draws,
        "accuracy-mean": statistics.mean(acc),
        "accuracy-std": statistics.stdev(acc),
        "accuracy-min": min(acc),
        "accuracy-max": max(acc),
        "epsilon-max": max(d["epsilon"] for d in draws),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quickstart_draws.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "# The quickstart, drawn again: accuracy between runs",
        "",
        f"`{out['command']}`: the main job (`fedllm simulate`, its defaults: breast cancer, "
        "4 Dirichlet sites, epsilon 1 per site), the same seed every time; only the DP noise "
        "and sampling (fresh OS entropy) differ.",
        "",
        "| draw | accuracy | AUC | largest site epsilon | wall |",
        "|---|---|---|---|---|",
        *(
            f"| {i} | {d['accuracy']:.4f} | {d['auc']:.4f} | {d['epsilon']:.4f} | "
            f"{d['wall-s']:.0f} s |"
            for i, d in enumerate(draws)
        ),
        "",
        f"Accuracy {out['accuracy-mean']:.4f} +- {out['accuracy-std']:.4f} (min "
        f"{out['accuracy-min']:.4f}, max {out['accuracy-max']:.4f}) over {len(draws)} draws.",
    ]
    (RESULTS / "quickstart_draws.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
