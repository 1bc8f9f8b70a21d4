"""DP-SGD speed: step time with DP / without DP for every task model, fedllm's chosen strategy
beside Opacus's default (as Flower's Opacus example uses it), measured in one run; and the
local-training part of a whole round (every site of a federation, DP vs plain).

A step time is the slope of a round's wall time over its step count: two round lengths, each
timed ``--reps`` times interleaved across configurations, the fastest of each kept (the run
least disturbed by the shared machine, as ``timeit`` advises), so per-round set-up (model
wrapping) is excluded from the step time and included in the round time. Threads default to 1:
in simulation each site gets one CPU (Ray sets OMP_NUM_THREADS=1).

    .venv/bin/python benchmarks/dp_overhead.py              # ~11 min on 2 cores (text model: 6)
    .venv/bin/python benchmarks/dp_overhead.py --quick      # ~1 min, fewer repeats

Writes results/dp_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedllm.config import RunConfig  # noqa: E402
from fedllm.privacy import DPParams, choose_mode  # noqa: E402
from fedllm.simulation import default_config  # noqa: E402
from fedllm.tasks import Task, get_task, load_federation  # noqa: E402
from fedllm.tasks.base import Split  # noqa: E402
from fedllm.training import LocalTraining, train_local  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATA = (ROOT / ".." / "shared" / "data").resolve()
SIGMA, CLIP = 1.0, 1.0
Trainer = Callable[[nn.Module, Split, int, int], None]  # (model, data, batch size, epochs)


@dataclass(frozen=True)
class Model:
    name: str
    task: Task
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    tokens: bool = False  # inputs and labels are byte sequences (the text task)

    def data(self, n: int, gen: torch.Generator) -> Split:
        if self.tokens:
            seqs = torch.randint(0, 256, (n, self.input_shape[0] + 1), generator=gen)
            return Split(seqs[:, :-1], seqs[:, 1:])
        return Split(
            torch.randn(n, *self.input_shape, generator=gen),
            torch.randint(0, self.task.num_classes, (n,), generator=gen),
        )


def task_models() -> list[Model]:
    from fedllm.tasks.tabular import TabularModel
    from fedllm.tasks.vision import SmallCNN

    tabular, mnist, text = get_task("breast-cancer"), get_task("mnist"), get_task("text")
    lm = RunConfig.from_flower({**default_config(ROOT), "task": "text"})  # the default LM
    return [
        Model("tabular logistic (30 features)", tabular, lambda: TabularModel(30, 0), (30,)),
        Model("tabular MLP (30-64-1)", tabular, lambda: TabularModel(30, 64), (30,)),
        Model("MNIST CNN (26k params)", mnist, lambda: SmallCNN(10), (1, 28, 28)),
        Model(
            f"text LM, LoRA r{lm.lora_rank} ({lm.lm_layers}x{lm.lm_width}, context "
            f"{lm.context_length})",
            text,
            lambda: text.build_model(lm, (lm.context_length,)),
            (lm.context_length,),
            tokens=True,
        ),
    ]


def fedllm_trainer(task: Task, mode: str | None) -> Trainer:
    """fedllm's own loop (``train_local``): plain when ``mode`` is None."""

    def train(model: nn.Module, data: Split, batch_size: int, epochs: int) -> None:
        dp = DPParams(SIGMA, CLIP, "rdp", grad_sample_mode=mode) if mode else None
        train_local(task, model, data, LocalTraining(epochs, batch_size, 0.1, 0), dp)

    return train


def peer_trainer(task: Task, dp: bool) -> Trainer:
    """Flower's Opacus example: a DataLoader, PrivacyEngine.make_private with its defaults
    (hooks, Poisson sampling through DPDataLoader), the usual loop."""

    def train(model: nn.Module, data: Split, batch_size: int, epochs: int) -> None:
        from opacus import PrivacyEngine

        loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
            TensorDataset(data.x, data.y), batch_size=batch_size, shuffle=True
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        if dp:
            model, optimizer, loader = PrivacyEngine().make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=SIGMA,
                max_grad_norm=CLIP,
            )
        for _ in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                task.loss(model(xb), yb).backward()
                optimizer.step()
        if dp:
            model._close()  # type: ignore[operator]

    return train


def timed(trainer: Trainer, model: Model, data: Split, batch_size: int, epochs: int) -> float:
    net = model.build()
    start = time.perf_counter()
    trainer(net, data, batch_size, epochs)
    return time.perf_counter() - start


def step_times(
    model: Model, batch_size: int, trainers: dict[str, Trainer], reps: int
) -> dict[str, float]:
    """Milliseconds per step for each trainer: the slope between 1 and 4 epochs, an epoch being
    long enough (16-256 steps, about 0.1 s of plain training) for the clock to resolve it; a
    model whose plain step takes over 50 ms gets 4-step epochs and at most 3 repeats."""

    def data(steps: int) -> Split:
        return model.data(steps * batch_size, torch.Generator().manual_seed(0))

    probe = min(timed(trainers["plain"], model, data(16), batch_size, 1) for _ in range(3)) / 16
    steps = int(min(256, max(16, 0.1 / probe)))
    if probe > 0.05:  # a step the clock resolves alone (the text model): 4 steps, 3 repeats
        steps, reps = 4, min(reps, 3)
    rows = data(steps)
    short, long = 1, 4
    shorts: dict[str, list[float]] = {name: [] for name in trainers}
    longs: dict[str, list[float]] = {name: [] for name in trainers}
    for trainer in trainers.values():  # warm-up
        timed(trainer, model, rows, batch_size, short)
    for _ in range(reps):
        for name, trainer in trainers.items():  # interleaved: drift hits every config alike
            shorts[name].append(timed(trainer, model, rows, batch_size, short))
            longs[name].append(timed(trainer, model, rows, batch_size, long))
    return {
        name: (min(longs[name]) - min(shorts[name])) / ((long - short) * steps) * 1e3
        for name in trainers
    }


def round_times(task_name: str, overrides: dict[str, object], reps: int) -> dict[str, float]:
    """Seconds of local training for one round of every site of a federation."""
    cfg = RunConfig.from_flower({**default_config(ROOT), "task": task_name, **overrides})
    task = get_task(cfg.task)
    sites = load_federation(cfg).sites
    shape = tuple(sites[0].train.x.shape[1:])
    trainers = {
        "plain": fedllm_trainer(task, None),
        "fedllm DP": fedllm_trainer(task, cfg.grad_sample_mode),
        "peer plain": peer_trainer(task, dp=False),
        "peer DP": peer_trainer(task, dp=True),
    }
    model = Model(task_name, task, lambda: task.build_model(cfg, shape), shape)
    samples: dict[str, list[float]] = {name: [] for name in trainers}
    rounds = 10  # a sample is 10 rounds of every site (each ~10 ms here): the clock resolves it
    for rep in range(reps + 1):
        for name, trainer in trainers.items():
            total = sum(
                timed(trainer, model, s.train, cfg.batch_size, 1)
                for _ in range(rounds)
                for s in sites
            )
            if rep:  # the first pass warms up
                samples[name].append(total / rounds)
    return {name: min(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args()
    reps = 3 if args.quick else args.reps
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Opacus's secure-RNG and hook warnings, every round
    steps = []
    for model in task_models():
        mode = choose_mode(model.build(), "auto")
        for batch_size in (64, 256):
            trainers = {
                "plain": fedllm_trainer(model.task, None),
                "fedllm": fedllm_trainer(model.task, "auto"),
                "opacus-default": peer_trainer(model.task, dp=True),
            }
            ms = step_times(model, batch_size, trainers, reps)
            row = {"model": model.name, "batch": batch_size, "mode": mode, **ms}
            steps.append(row)
            print(
                f"{model.name:32s} B={batch_size:<4d} plain {ms['plain']:7.3f} ms | Opacus "
                f"default {ms['opacus-default'] / ms['plain']:5.2f}x | fedllm ({mode}) "
                f"{ms['fedllm'] / ms['plain']:5.2f}x (+{ms['fedllm'] - ms['plain']:.3f} ms)",
                flush=True,
            )
    rounds = []
    federations = {
        "breast-cancer": ("breast-cancer", {"num-sites": 4, "partitioner": "dirichlet"}),
        "heart-disease": (
            "heart-disease",
            {
                "data-path": str(DATA / "heart_disease"),
                "partitioner": "natural",
                "batch-size": 64,
                "learning-rate": 1.0,
            },
        ),
    }
    for label, (task_name, overrides) in federations.items():
        if task_name == "heart-disease" and not (DATA / "heart_disease").is_dir():
            print(f"skipping {label}: {DATA / 'heart_disease'} is not here")
            continue
        secs = round_times(task_name, overrides, reps)
        rounds.append({"federation": label, **secs})
        ours, peer = secs["fedllm DP"] / secs["plain"], secs["peer DP"] / secs["peer plain"]
        print(f"round of {label}: fedllm DP/plain {ours:.2f}x | peer {peer:.2f}x", flush=True)
    write(steps, rounds, args.threads, reps)


def write(
    steps: list[dict[str, object]], rounds: list[dict[str, object]], threads: int, reps: int
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "threads": threads,
        "reps": reps,
        "torch": torch.__version__,
        "noise": SIGMA,
        "clip": CLIP,
    }
    (RESULTS / "dp_overhead.json").write_text(
        json.dumps({"meta": meta, "steps": steps, "rounds": rounds}, indent=2) + "\n"
    )
    lines = [
        f"DP step time / plain step time ({threads} thread, fastest of {reps}, "
        "ms per step without set-up):",
        "",
        "| model | batch | plain step | Opacus default (hooks) | fedllm (strategy) | fedllm added "
        "| goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in steps:
        plain, ours, peer = (float(r[k]) for k in ("plain", "fedllm", "opacus-default"))  # type: ignore[arg-type]
        goal = (
            f"<= 1.5x: {'met' if ours / plain <= 1.5 else 'NOT met'}"
            if plain >= 5
            else (f"<= +0.5 ms: {'met' if ours - plain <= 0.5 else 'NOT met'}")
        )
        lines.append(
            f"| {r['model']} | {r['batch']} | {plain:.3f} ms | {peer / plain:.2f}x | "
            f"{ours / plain:.2f}x ({r['mode']}) | +{ours - plain:.3f} ms | {goal} |"
        )
    if rounds:
        lines += [
            "",
            "Local training of one whole round (every site, 1 local epoch), DP / plain:",
            "",
            "| federation | plain | fedllm DP | fedllm DP / plain | peer DP / peer plain |",
            "|---|---|---|---|---|",
        ]
        for r in rounds:
            plain, ours = float(r["plain"]), float(r["fedllm DP"])  # type: ignore[arg-type]
            peer = float(r["peer DP"]) / float(r["peer plain"])  # type: ignore[arg-type]
            lines.append(
                f"| {r['federation']} | {plain * 1e3:.1f} ms | {ours * 1e3:.1f} ms | "
                f"{ours / plain:.2f}x | {peer:.2f}x |"
            )
    (RESULTS / "dp_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {RESULTS / 'dp_overhead.md'} and .json")


if __name__ == "__main__":
    main()
