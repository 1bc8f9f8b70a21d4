"""Local training and evaluation of one site's model, with or without DP-SGD."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from fedllm.privacy.accounting import DPEvent
from fedllm.privacy.engine import DPParams, PrivateStep, make_private
from fedllm.privacy.randomness import NoiseSource
from fedllm.tasks.base import Split, Task


@dataclass(frozen=True)
class LocalTraining:
    """One round's local schedule. ``seed`` drives what may be public (plain training's
    shuffles); DP noise and Poisson sampling come from fresh OS entropy unless ``noise_seed``
    is set (research: reproducible noise, not private against whoever knows it)."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    optimizer: str = "sgd"  # or "adam" (fresh state each call: each round starts anew)
    noise_seed: int | None = None


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
    """Train ``model`` in place on ``data``: plain SGD, or DP-SGD when ``dp`` is given.

    Batches are drawn by indexing the site's tensors, never example by example: DP-SGD uses
    Poisson sampling (each row in each step with probability ``q = 1 / ceil(n / B)``, as
    Opacus's DPDataLoader draws it), plain SGD a shuffled pass per epoch. Under DP the noise
    and the Poisson batches come from :class:`NoiseSource` (secret unless ``noise_seed``). Runs
    on the GPU when there is one; the model comes back on the CPU.
    """
    torch.manual_seed(settings.seed)  # model-side randomness only (e.g. dropout), not DP's
    device = default_device()
    model.to(device)
    x, y = data.x.to(device), data.y.to(device)
    n = len(y)
    optimizer = local_optimizer(model, settings)
    model.train()
    private: PrivateStep | None = None
    sampling = np.random.default_rng(settings.seed)  # used only by DP's Poisson sampling
    if dp is not None:
        source = (
            NoiseSource.from_os_entropy(device)
            if settings.noise_seed is None
            else NoiseSource.reproducible(settings.noise_seed, device)
        )
        private = make_private(
            model, optimizer, task.loss, n, settings.batch_size, dp, source.noise
        )
        sampling = source.sampling
    module = private.module if private else model
    losses: list[torch.Tensor] = []
    steps = 0
    with warnings.catch_warnings():
        # Opacus's per-sample hooks fire on the first layer's output, whose input needs no
        # gradient; PyTorch warns about that on every backward pass. It is expected.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for epoch in range(settings.epochs):
            for rows in _batches(
                n, settings.batch_size, dp, sampling, settings.seed * 7919 + epoch
            ):
                rows = rows.to(device, non_blocking=True)
                xb, yb = x[rows], y[rows]
                if private is not None:
                    loss = private.backward_and_step(module(xb), yb)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss = task.loss(module(xb), yb)
                    loss.backward()
                    optimizer.step()
                steps += 1
                if len(yb):
                    losses.append(loss.detach())
    if private is not None:
        private.close()
    model.to("cpu")
    mean_loss = float(torch.stack(losses).mean()) if losses else math.nan
    rate = 1.0 / math.ceil(n / settings.batch_size) if n else 0.0
    events = [DPEvent(dp.noise_multiplier, rate, steps)] if dp and steps else []
    return TrainResult(mean_loss, steps, events)


def local_optimizer(model: torch.nn.Module, settings: LocalTraining) -> torch.optim.Optimizer:
    """SGD or Adam over the trainable parameters. Under DP the optimizer only sees the
    clipped, noised gradient, so the choice costs no privacy."""
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.learning_rate)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.learning_rate)
    raise ValueError(f"unknown optimizer {settings.optimizer!r} (sgd or adam)")


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def poisson_rows(n: int, rate: float, rng: np.random.Generator) -> torch.Tensor:
    """Rows of one Poisson-sampled batch: each of ``n`` rows independently with probability
    ``rate`` (what Opacus's UniformWithReplacementSampler draws).

    Drawn as the gaps between chosen rows, which are geometric (a Bernoulli process): a step
    costs O(batch) in NumPy, not O(n) tensor operations.
    """
    if rate >= 1.0:
        return torch.arange(n)
    expected = n * rate
    draws = int(expected + 6 * math.sqrt(expected * (1 - rate)) + 16)
    chunks, last = [], -1
    while last < n - 1:  # almost always once: ``draws`` covers n with overwhelming odds
        rows = np.cumsum(rng.geometric(rate, size=draws)) + last  # gaps in 1, 2, ...
        chunks.append(rows)
        last = int(rows[-1])
    rows = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return torch.from_numpy(rows[rows < n])


def _batches(
    n: int, batch_size: int, dp: DPParams | None, rng: np.random.Generator, seed: int
) -> Iterator[torch.Tensor]:
    """Row indices of one epoch's batches: ceil(n / B) of them. DP: Poisson draws from
    ``rng`` (the secret source); plain training: a shuffle from the public ``seed``."""
    count = math.ceil(n / batch_size) if n else 0
    if dp is not None and dp.poisson_sampling:
        for _ in range(count):
            yield poisson_rows(n, 1.0 / count, rng)
    elif dp is not None:  # in order (tests compare with plain training batch by batch)
        yield from torch.arange(n).split(batch_size)
    else:
        yield from torch.randperm(n, generator=torch.Generator().manual_seed(seed)).split(
            batch_size
        )


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
    metrics.update(task.extra_metrics(metrics))
    labels = data.y.numpy()
    if task.num_classes == 2 and len(np.unique(labels)) == 2:
        from sklearn.metrics import roc_auc_score

        metrics["auc"] = float(roc_auc_score(labels, scores.numpy()))
    return metrics
