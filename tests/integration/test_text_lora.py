"""Pretrain a tiny base, federate DP-LoRA for 2 rounds on the real simulation engine, sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedllm.config import RunConfig
from fedllm.lm import Pretraining, pretrain
from fedllm.simulation import default_config
from tests.integration.test_simulation import ROOT, simulate
from tests.text_data import play, write_play

# Starts Flower's simulation engine (Ray): left out of the quick loop, `-m "not slow"`.
pytestmark = pytest.mark.slow

ARCH = {"context-length": 32, "lm-layers": 1, "lm-heads": 2, "lm-width": 32}
TARGET = 8.0


def test_two_dp_lora_rounds_reduce_held_out_loss(tmp_path: Path) -> None:
    cfg = RunConfig.from_flower({**default_config(ROOT), **ARCH, "task": "text"})
    base = tmp_path / "base.pt"
    # The "public" text: another draw of the same play; 60 steps leave room to improve.
    pretrain(cfg, play(200, seed=1).encode(), Pretraining(60, 32, 3e-3), base)
    data = write_play(tmp_path / "private.txt", 900, seed=2)
    overrides = [f"{k}={v}" for k, v in ARCH.items()] + [
        'task="text"', f'data-path="{data}"', f'base-model="{base}"', 'partitioner="natural"',
        "num-sites=2", "num-server-rounds=2", "batch-size=64", "learning-rate=0.5",
        "max-grad-norm=1.0", f"target-epsilon={TARGET}", "lora-rank=4",
    ]  # fmt: skip
    simulate(tmp_path, "lm", *overrides)
    run = tmp_path / "lm"
    metrics = json.loads((run / "metrics.json").read_text())
    initial, rounds = metrics["initial"], metrics["rounds"]
    assert rounds[-1]["loss"] < rounds[0]["loss"] < initial["loss"]
    assert rounds[-1]["perplexity"] < initial["perplexity"]
    for site in ("site-0", "site-1"):  # cumulative, growing, within the target
        spent = [r["epsilon"][site] for r in rounds]
        assert 0 < spent[0] < spent[1] <= TARGET
    final = metrics["final"]
    assert 0 < final["update-bytes"] < final["model-bytes"] / 5
    assert all(s["update-bytes"] == final["update-bytes"] for s in rounds[-1]["sites"].values())
    state = torch.load(run / "model.pt", weights_only=True)  # base + adapters
    assert any(".lora_a." in k for k in state) and "embed.weight" in state
    assert "unit of privacy is one sequence of 33 bytes" in (run / "report.md").read_text()
    out = subprocess.run(
        [sys.executable, "-m", "fedllm.cli", "generate", "--model", str(run), "--prompt",
         "ALICE:\n", "--tokens", "40"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ALICE:\n") and len(out.stdout) > len("ALICE:\n") + 20
