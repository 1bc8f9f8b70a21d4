"""Local training and evaluation of one site's model, with or without DP-SGD."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedllm.privacy.accounting import DPEvent
from fedllm.privacy.engine import DPParams, make_private
from fedllm.tasks.base import Split, Task


@dataclass(frozen=True)
class LocalTraining:
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int


@dataclass(frozen=True)
class TrainResult:
    """Mean training loss, optimizer steps taken, and the DP events spent (empty without DP)."""

    loss: float
    steps: int
    events: list[DPEvent] = field(default_factory=list)


def train_local(
    task: Task,
    model: torch.nn.Module,
    data: Split,
    settings: LocalTraining,
    dp: DPParams | None,
) -> TrainResult:
    """Train ``model`` in place on ``data``: plain SGD, or DP-SGD when ``dp`` is given."""
    torch.manual_seed(settings.seed)  # batches and, with DP, the noise
    generator = torch.Generator().manual_seed(settings.seed)
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
        TensorDataset(data.x, data.y),
        batch_size=settings.batch_size,
        shuffle=dp is None or dp.poisson_sampling,
        generator=generator,
    )
    optimizer: torch.optim.Optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.learning_rate
    )
    model.train()
    module: torch.nn.Module = model
    private = None
    if dp is not None:
        private = make_private(model, optimizer, loader, dp)
        module, optimizer, loader = private.module, private.optimizer, private.data_loader
    with warnings.catch_warnings():
        # Opacus's per-sample hooks fire on the first layer's output, whose input needs no
        # gradient; PyTorch warns about that on every backward pass. It is expected.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        losses, steps = _epochs(task, module, optimizer, loader, settings.epochs)
    if private is not None:
        private.close()
    mean_loss = float(torch.stack(losses).mean()) if losses else math.nan
    return TrainResult(mean_loss, steps, private.events() if private else [])


def _epochs(
    task: Task,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    epochs: int,
) -> tuple[list[torch.Tensor], int]:
    losses: list[torch.Tensor] = []
    steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(module(xb), yb)
            loss.backward()
            optimizer.step()
            steps += 1
            if len(yb):
                losses.append(loss.detach())
    return losses, steps


@torch.no_grad()
def evaluate(
    task: Task, model: torch.nn.Module, data: Split, batch_size: int = 1024
) -> dict[str, float]:
    """Loss, accuracy and (binary tasks with both classes present) ROC AUC on ``data``."""
    model.eval()
    logits = torch.cat([model(data.x[i : i + batch_size]) for i in range(0, len(data), batch_size)])
    loss = float(task.loss(logits, data.y))
    scores = task.scores(logits)
    binary = task.num_classes == 2
    predictions = (scores >= 0.5).long() if binary else scores.argmax(dim=-1)
    metrics = {"loss": loss, "accuracy": float((predictions == data.y).float().mean())}
    labels = data.y.numpy()
    if task.num_classes == 2 and len(np.unique(labels)) == 2:
        from sklearn.metrics import roc_auc_score

        metrics["auc"] = float(roc_auc_score(labels, scores.numpy()))
    return metrics
