"""Federated DP-LoRA on Tiny Shakespeare: one site per group of speakers.

(a) a base pretrained centrally on the first part of the play (the "public" text), alone;
(b) federated LoRA fine-tuning of that base on the rest, sites split by speaker group, no DP;
(c) the same with DP-SGD at per-site (cumulative) epsilon 8;
(d) centralized LoRA fine-tuning on the sites' pooled training text (as many passes over it as
    (b) makes: rounds x local epochs).
All are scored on the same held-out sequences (each site's held-out share of its own text).
(b) and (c) are the real product (`fedllm simulate`: Flower's simulation engine, fedllm's
DP-SGD, per-site ledgers); (a) and (d) use the same library code in-process.

(b) and (d) are tuned alike: the same grid (PLAIN_GRID), the same tuning seed, scored on the
same validation sequences carved out of the sites' training sequences (never the held-out
ones), in-process (``benchmarks/tuning.py``); every setting tried and its validation score are
in the results. (c) keeps the DP setting of the earlier sweep (LOCAL["dp"]), untuned here.

    .venv/bin/python benchmarks/shakespeare.py            # ~1.5 h on 2 cores
    .venv/bin/python benchmarks/shakespeare.py --base B   # reuse a base from the same pretraining
    .venv/bin/python benchmarks/shakespeare.py --quick    # a smoke run (~10 min)

``--base`` takes a checkpoint written by the pretraining command this script runs (printed at
its start; the checkpoint's own note, steps and loss, is what the table reports), so the
federated part can be re-run without pretraining again.

Reads ../shared/data/tiny_shakespeare/input.txt, or $FEDLLM_DATA/tiny_shakespeare/input.txt
(never copied into the repository; the public and private parts are written to a temporary
folder). Writes results/shakespeare.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = (
    Path(os.environ.get("FEDLLM_DATA", ROOT / ".." / "shared" / "data"))
    / "tiny_shakespeare"
    / "input.txt"
).resolve()
RESULTS = ROOT / "benchmarks" / "results"

ARCH: dict[str, object] = {"context-length": 128, "lm-layers": 4, "lm-heads": 4, "lm-width": 128}
FEDERATED: dict[str, object] = {
    **ARCH,
    "task": "text",
    "partitioner": "natural",
    "num-sites": 10,
    "num-server-rounds": 4,
    "local-epochs": 1,
    "lora-rank": 8,
    "lora-alpha": 16.0,
    "lora-targets": "q,k,v,o,up,down",
    "test-fraction": 0.1,
    "max-grad-norm": 1.0,
    "accountant": "prv",
}
PUBLIC_FRACTION = 0.5  # the first half of the play pretrains the base
PRETRAIN = {"steps": 2400, "batch-size": 32, "learning-rate": 3e-3}
# Local training of the adapters, per row, from a short in-process sweep (4 rounds, no DP:
# Adam 1e-2 batch 16 0.549, Adam 2e-3 0.543, SGD 1.0 batch 16 0.534, SGD batch 64 with a
# server step of 3 0.527; DP epsilon 8: SGD 1.0 batch 64 beat Adam 1e-2, rank 8 or 2, and
# SGD 2.0; full-batch DP-GD at lr 4 only matched it, 0.5270 / 0.5284 with 1 / 2 local
# epochs). Small batches give more steps per epoch; DP-SGD wants large ones (the noise is
# divided by the batch size), and Adam spreads the noise evenly over every coordinate.
LOCAL = {"dp": {"optimizer": "sgd", "batch-size": 64, "learning-rate": 1.0}}
EPSILON = 8.0
# (b) and (d), without DP: one grid for both, scored on validation sequences (VALIDATION of each
# site's training sequences) with TUNING_SEED; the reported runs use seed 0.
PLAIN_GRID = [
    {"optimizer": "adam", "batch-size": b, "learning-rate": lr}
    for lr in (1e-2, 3e-3)
    for b in (16, 64)
]
VALIDATION = 0.1
TUNING_SEED = 100
# One thread per process: on a shared 2-core machine more threads per process run far slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}


def toml(value: object) -> str:
    return (
        json.dumps(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def stream(cmd: list[str], log: Path, prefix: str) -> None:
    """Run ``cmd``, echoing progress lines (rounds, pretraining steps) and keeping the log."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if "fedllm round" in line or "pretrain step" in line or "error" in line.lower():
                text = line.strip()
                text = text[text.find("fedllm round") :] if "fedllm round" in text else text
                print(f"  [{prefix}] {text[:170]}", flush=True)
        if proc.wait() != 0:
            raise SystemExit(f"{prefix} failed; see {log}")


def split_play(text: bytes, fraction: float) -> tuple[bytes, bytes]:
    """The first ``fraction`` of the bytes (cut at a speech boundary) and the rest."""
    cut = text.index(b"\n\n", int(len(text) * fraction)) + 2
    return text[:cut], text[cut:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, 2 rounds")
    parser.add_argument(
        "--base", type=Path, help="a base already pretrained by this script's command"
    )
    parser.add_argument("--grid-limit", type=int, default=0, help="first N settings (a pilot)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))  # `tuning` (Opacus owns `benchmarks`)
    import torch
    from tuning import carve, run_inprocess

    from fedllm.config import RunConfig
    from fedllm.simulation import default_config
    from fedllm.tasks.base import Split
    from fedllm.tasks.text import TextLM
    from fedllm.training import evaluate, train_local
    from fedllm.weights import exchanged_state, state_bytes

    torch.set_num_threads(1)
    fed = dict(FEDERATED)
    pre = dict(PRETRAIN)
    grid = PLAIN_GRID[: args.grid_limit] if args.grid_limit else PLAIN_GRID
    if args.quick:
        fed.update({"num-server-rounds": 2})
        pre.update({"steps": 100})
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fedllm-shakespeare-"))
    public, private = split_play(DATA.read_bytes(), PUBLIC_FRACTION)
    (work / "public.txt").write_bytes(public)
    (work / "private.txt").write_bytes(private)
    print(
        f"fedllm shakespeare: public {len(public):,} bytes, private {len(private):,} bytes; "
        f"work folder {work}"
    )

    base = work / "base.pt"
    cmd = [
        sys.executable,
        "-m",
        "fedllm.cli",
        "pretrain",
        "--text",
        str(work / "public.txt"),
        "--out",
        str(base),
        "--steps",
        str(pre["steps"]),
        "--batch-size",
        str(pre["batch-size"]),
        "--learning-rate",
        str(pre["learning-rate"]),
    ]
    cmd += [a for k, v in ARCH.items() for a in ("-c", f"{k}={toml(v)}")]
    print("pretraining command: " + " ".join(cmd), flush=True)
    if args.base:
        note = torch.load(args.base, weights_only=True, map_location="cpu")["note"]
        if {k: note[k] for k in pre} != pre or note["text-bytes"] != len(public):
            raise SystemExit(f"{args.base} was not pretrained by this command: {note}")
        base = args.base.resolve()
        pretrain_s = float(note["seconds"])
        print(f"(a) reusing the base {base}: {note}", flush=True)
    else:
        print(f"(a) pretraining the base: {pre['steps']} steps", flush=True)
        t0 = time.monotonic()
        stream(cmd, work / "pretrain.log", "pretrain")
        pretrain_s = time.monotonic() - t0
        note = torch.load(base, weights_only=True, map_location="cpu")["note"]

    fed.update({"data-path": str(work / "private.txt"), "base-model": str(base)})
    cfg = RunConfig.from_flower({**default_config(ROOT), **fed})
    task = TextLM()
    federation = task.federation(cfg)
    test = federation.central_test
    model = task.build_model(cfg, federation.input_shape)
    rows: dict[str, dict[str, Any]] = {}
    rows["a"] = {"setting": "(a) pretrained base alone", **evaluate(task, model, test, 256)}
    print(f"  base: accuracy {rows['a']['accuracy']:.4f}, perplexity {rows['a']['perplexity']:.3f}")
    sizes = {s.name: len(s.train) for s in federation.sites}
    full = replace(cfg, lora_rank=0)
    full_bytes = state_bytes(exchanged_state(task.build_model(full, federation.input_shape)))
    result: dict[str, Any] = {
        "config": {k: v for k, v in fed.items() if k not in ("data-path", "base-model")},
        "public-fraction": PUBLIC_FRACTION,
        "pretrain": {**pre, "seconds": round(pretrain_s, 1), "final-loss": note["final-loss"]},
        "local-training": LOCAL,
        "tuning": {"grid": grid, "validation": VALIDATION, "seed": TUNING_SEED, "runs": []},
        "site-train-sequences": sizes,
        "test-sequences": len(test),
        "rows": rows,
        "bytes-per-round-per-site": {
            "lora": state_bytes(exchanged_state(model)),
            "full": full_bytes,
        },
        "quick": args.quick,
        "complete": False,
    }
    save(result, started)

    # (b) and (d) tuned alike: every setting of the grid, each row scored on the same
    # validation sequences (carved from the training sequences) after the same passes.
    tuning = carve(federation, VALIDATION, TUNING_SEED)
    epochs = cfg.num_server_rounds * cfg.local_epochs  # (d): as many passes as (b)
    for setting in grid:
        trial = replace(
            cfg,
            seed=TUNING_SEED,
            optimizer=str(setting["optimizer"]),
            batch_size=int(setting["batch-size"]),
            learning_rate=float(setting["learning-rate"]),
        )
        federated = run_inprocess("fedllm", trial, tuning, eval_batch=256)
        t0 = time.monotonic()
        pooled_fit = Split(
            torch.cat([s.train.x for s in tuning.sites]),
            torch.cat([s.train.y for s in tuning.sites]),
        )
        central = task.build_model(trial, federation.input_shape)
        train_local(task, central, pooled_fit, local_settings(setting, epochs, TUNING_SEED), None)
        centralized = {
            **evaluate(task, central, tuning.central_test, 256),
            "seconds": round(time.monotonic() - t0, 1),
        }
        for row, scores in (("b", federated), ("d", centralized)):
            result["tuning"]["runs"].append({"row": row, "setting": setting, **scores})
            print(
                f"  tuning ({row}) {local(setting)}: validation accuracy "
                f"{scores['accuracy']:.4f} ({scores['seconds']:.0f} s)",
                flush=True,
            )
        save(result, started)
    picked = {
        row: max(
            (r for r in result["tuning"]["runs"] if r["row"] == row),
            key=lambda r: r["accuracy"],
        )["setting"]
        for row in ("b", "d")
    }
    result["local-training"] = {**LOCAL, "plain": picked["b"], "central": picked["d"]}

    for key, dp in (("b", False), ("c", True)):
        name = f"fed-{'dp' if dp else 'plain'}"
        overrides = {
            **fed,
            "dp": dp,
            **(LOCAL["dp"] if dp else picked["b"]),
            "target-epsilon": EPSILON,
            "out-dir": str(work),
            "run-name": name,
        }
        cmd = [sys.executable, "-m", "fedllm.cli", "simulate"]
        cmd += [a for k, v in overrides.items() for a in ("-c", f"{k}={toml(v)}")]
        print(f"({key}) federated LoRA, {'DP epsilon 8' if dp else 'no DP'}", flush=True)
        t0 = time.monotonic()
        stream(cmd, work / f"{name}.log", name)
        metrics = json.loads((work / name / "metrics.json").read_text())
        final = metrics["final"]
        rows[key] = {
            "setting": f"({key}) federated LoRA, " + (f"DP epsilon {EPSILON:g}" if dp else "no DP"),
            "accuracy": final["accuracy"],
            "perplexity": final["perplexity"],
            "loss": final["loss"],
            "epsilon": final["epsilon"],
            "seconds": round(time.monotonic() - t0, 1),
            "update-bytes": final["update-bytes"],
            "model-bytes": final["model-bytes"],
        }
        print(
            f"  accuracy {final['accuracy']:.4f}, perplexity {final['perplexity']:.3f}, "
            f"epsilon {final['epsilon']}"
        )
        save(result, started)

    print("(d) centralized LoRA fine-tuning on the pooled text", flush=True)
    t0 = time.monotonic()
    pooled = Split(
        torch.cat([s.train.x for s in federation.sites]),
        torch.cat([s.train.y for s in federation.sites]),
    )
    central = task.build_model(cfg, federation.input_shape)
    train_local(task, central, pooled, local_settings(picked["d"], epochs, cfg.seed), None)
    rows["d"] = {
        "setting": f"(d) centralized LoRA fine-tuning, pooled text, {epochs} epochs, no DP",
        **evaluate(task, central, test, 256),
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(f"  accuracy {rows['d']['accuracy']:.4f}, perplexity {rows['d']['perplexity']:.3f}")

    result["complete"] = True
    save(result, started)
    print(markdown(result))
    return 0


def local_settings(setting: dict[str, Any], epochs: int, seed: int) -> Any:
    from fedllm.training import LocalTraining

    return LocalTraining(
        epochs,
        int(setting["batch-size"]),
        float(setting["learning-rate"]),
        seed,
        str(setting["optimizer"]),
    )


def save(result: dict[str, Any], started: float) -> None:
    """Write what is measured so far (a run cut short still leaves its rows)."""
    result["seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "shakespeare-quick" if result["quick"] else "shakespeare"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))


def chosen(r: dict[str, Any], key: str) -> str:
    setting = r["local-training"].get(key)
    return local(setting) if setting else "(not tuned yet)"


def local(settings: dict[str, Any]) -> str:
    return (
        f"{ {'adam': 'Adam', 'sgd': 'SGD'}[settings['optimizer']] } "
        f"at learning rate {settings['learning-rate']:g}, batch {settings['batch-size']}"
    )


def markdown(r: dict[str, Any]) -> str:
    cfg = r["config"]
    lines = [
        "# Tiny Shakespeare: federated DP-LoRA",
        "",
        f"{cfg['num-sites']} sites, one per group of speakers (largest speakers spread evenly), on "
        f"the last {1 - r['public-fraction']:.0%} of the play; the base is pretrained on the first "
        f"{r['public-fraction']:.0%} ({r['pretrain']['steps']} AdamW steps of batch "
        f"{r['pretrain']['batch-size']}, {r['pretrain']['seconds']:.0f} s, final training loss "
        f"{r['pretrain'].get('final-loss', float('nan')):.3f}). Byte-level decoder "
        f"({cfg['lm-layers']} layers, width "
        f"{cfg['lm-width']}, {cfg['lm-heads']} heads, context {cfg['context-length']}); LoRA rank "
        f"{cfg['lora-rank']}, alpha {cfg['lora-alpha']} on {cfg['lora-targets']}. "
        f"{cfg['num-server-rounds']} rounds x {cfg['local-epochs']} local epochs; local "
        f"training {chosen(r, 'plain')} for (b), {chosen(r, 'central')} for (d) (each the "
        "best of the same grid on the same validation sequences, below), "
        f"{local(r['local-training']['dp'])} with DP, clip {cfg['max-grad-norm']}. Scored on "
        f"{r['test-sequences']} held-out sequences (each site's {cfg['test-fraction']:.0%}). "
        "The unit of privacy is one sequence of "
        f"{cfg['context-length'] + 1} bytes.",
        "",
        "| setting | next-char accuracy | perplexity | epsilon per site |",
        "|---|---|---|---|",
    ]
    for row in r["rows"].values():
        eps = row.get("epsilon")
        lines.append(
            f"| {row['setting']} | {row['accuracy']:.4f} | {row['perplexity']:.3f} | "
            f"{'-' if eps is None else f'{eps:.3f}'} |"
        )
    tuning = r.get("tuning", {})
    if tuning.get("runs"):
        lines += [
            "",
            f"Tuning of (b) and (d), the same grid and budget: validation accuracy on "
            f"{tuning['validation']:.0%} of each site's training sequences (seed {tuning['seed']}; "
            "the held-out sequences are never scored), in-process (`benchmarks/tuning.py`):",
            "",
            "| local training | (b) federated | (d) centralized |",
            "|---|---|---|",
        ]
        for setting in tuning["grid"]:
            cells = [
                next(
                    (
                        f"{x['accuracy']:.4f}"
                        for x in tuning["runs"]
                        if x["row"] == row and x["setting"] == setting
                    ),
                    "-",
                )
                for row in ("b", "d")
            ]
            lines.append(f"| {local(setting)} | {cells[0]} | {cells[1]} |")
    b = r["bytes-per-round-per-site"]
    lines += [
        "",
        f"Bytes sent per round per site: LoRA {b['lora']:,}, full fine-tuning {b['full']:,} "
        f"({b['full'] / b['lora']:.1f}x more).",
        "",
        f"Total run time {r['seconds'] / 60:.1f} min"
        + (" (quick smoke run)" if r["quick"] else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
