"""Sampling from a language model: a base checkpoint, or a run's model with its LoRA adapters
merged into the base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch

from fedllm.config import RunConfig
from fedllm.errors import ConfigError, DataError
from fedllm.models.base_checkpoint import load_base_model
from fedllm.models.gpt import TinyGPT
from fedllm.models.lora import merge_lora
from fedllm.tasks.text import TextLM


def load_trained(path: Path) -> tuple[TinyGPT, RunConfig | None]:
    """A model to sample from: a base checkpoint, or a run folder (its config and model.pt,
    adapters merged into the base)."""
    if path.is_file():
        return load_base_model(path), None
    metrics, weights = path / "metrics.json", path / "model.pt"
    for needed in (metrics, weights):
        if not needed.is_file():
            raise DataError(f"--model {path}: no {needed.name} (a run folder or a base .pt)")
    cfg = RunConfig.from_flower(json.loads(metrics.read_text())["config"])
    if cfg.task != TextLM.name:
        raise ConfigError(f"run {path} trained task `{cfg.task}`, not a language model")
    adapted = TextLM().architecture(cfg)
    adapted.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    return cast(TinyGPT, merge_lora(adapted)), cfg


@torch.no_grad()
def generate(
    model: TinyGPT, prompt: str, tokens: int, temperature: float = 0.8, seed: int = 0
) -> str:
    """Sample ``tokens`` bytes after ``prompt`` (temperature sampling, the last
    `context-length` bytes as context)."""
    if temperature <= 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature}")
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = list(prompt.encode("utf-8")) or [ord("\n")]
    for _ in range(tokens):
        context = torch.tensor([ids[-model.args.context_length :]])
        logits = model(context)[0, -1] / temperature  # (V,)
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
    return bytes(ids).decode("utf-8", errors="replace")
