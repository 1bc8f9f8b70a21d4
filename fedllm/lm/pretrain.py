"""Pretraining a base centrally on public text (no privacy needed, none claimed): AdamW on
random windows, one-cycle learning rate, as nanoGPT's ``train.py`` does at a smaller scale.
The sites then fine-tune this base through LoRA adapters under DP."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedllm.config import RunConfig
from fedllm.errors import DataError
from fedllm.models.base_checkpoint import save_base
from fedllm.models.gpt import GPTArgs, TinyGPT, sequence_loss


@dataclass(frozen=True)
class Pretraining:
    steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0


def pretrain(
    cfg: RunConfig,
    text: bytes,
    settings: Pretraining,
    out: Path,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the base model centrally (AdamW, random windows of public ``text``) and save it to
    ``out``; returns the training note stored in the checkpoint."""
    args = GPTArgs.of(cfg)
    data = torch.from_numpy(np.frombuffer(text, dtype=np.uint8).astype(np.int64))
    if len(data) <= args.context_length + 1:
        raise DataError(
            f"pretraining text has {len(data)} bytes; need more than {args.context_length + 1}"
        )
    torch.manual_seed(cfg.seed)
    model = TinyGPT(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings.learning_rate, total_steps=settings.steps, pct_start=0.05
    )
    gen = torch.Generator().manual_seed(settings.seed)
    window = torch.arange(args.context_length + 1)
    started, loss_avg = time.monotonic(), math.nan
    model.train()
    for step in range(1, settings.steps + 1):
        starts = torch.randint(
            0, len(data) - args.context_length - 1, (settings.batch_size,), generator=gen
        )
        batch = data[starts[:, None] + window]  # (B, T + 1)
        loss = sequence_loss(model(batch[:, :-1]), batch[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        loss_avg = value if step == 1 else 0.95 * loss_avg + 0.05 * value
        if progress and (step % max(1, settings.steps // 20) == 0 or step == settings.steps):
            progress(
                f"pretrain step {step}/{settings.steps} ({time.monotonic() - started:.0f}s): "
                f"loss {loss_avg:.3f}"
            )
    note = {
        "steps": settings.steps,
        "batch-size": settings.batch_size,
        "learning-rate": settings.learning_rate,
        "text-bytes": len(data),
        "final-loss": loss_avg,
        "seconds": round(time.monotonic() - started, 1),
    }
    save_base(model, out, note)
    return note
