"""Local training and evaluation of one site's model, with or without DP-SGD (and, for
FedProx, with a proximal term towards the global model)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from fedllm.privacy.accounting import DPEvent
from fedllm.privacy.engine import DPParams, PrivateStep, make_private
from fedllm.privacy.randomness import NoiseSource
from fedllm.tasks.base import Split, Task


@dataclass(frozen=True)
class LocalTraining:
    """One round's local schedule. ``seed`` drives what may be public (plain training's
    shuffles); DP noise and Poisson sampling come from fresh OS entropy unless ``noise_seed``
    is set (research: reproducible noise, not private against whoever knows it).
    ``proximal_mu``: FedProx's weight (0: none), see :func:`proximal_term`.
    ``schedule_examples``: under DP, the example count the sampling rate, the steps per epoch
    and the normalizer are derived from: the site's released (noised) count, so none of them
    depends on the exact count (None: the exact count, for tests and plain training)."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    optimizer: str = "sgd"  # or "adam" (fresh state each call: each round starts anew)
    noise_seed: int | None = None
    proximal_mu: float = 0.0
    schedule_examples: int | None = None


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
    Poisson sampling (each row in each step with probability ``q = 1 / ceil(m / B)``, as
    Opacus's DPDataLoader draws it, with ``m`` the schedule's count: ``ceil(m / B)`` steps an
    epoch, the noised sum divided by ``int(m q)``), plain SGD a shuffled pass per epoch. Under
    DP the noise and the Poisson batches come from :class:`NoiseSource` (secret unless
    ``noise_seed``). Runs on the GPU when there is one; the model comes back on the CPU.
    """
    torch.manual_seed(settings.seed)  # model-side randomness only (e.g. dropout), not DP's
    device = default_device()
    model.to(device)
    x, y = data.x.to(device), data.y.to(device)
    n = len(y)
    m = settings.schedule_examples or n  # what the DP schedule is derived from
    optimizer = local_optimizer(model, settings)
    # Anchored at the weights as loaded (the global model); added after DP's clipping and noise.
    proximal = proximal_term(optimizer, settings.proximal_mu) if settings.proximal_mu else None
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
            model, optimizer, task.loss, m, settings.batch_size, dp, source.noise
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
                n, m, settings.batch_size, dp, sampling, settings.seed * 7919 + epoch
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
    if proximal is not None:
        proximal.remove()
    model.to("cpu")
    mean_loss = float(torch.stack(losses).mean()) if losses else math.nan
    rate = 1.0 / math.ceil(m / settings.batch_size) if m else 0.0
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


def proximal_term(optimizer: torch.optim.Optimizer, mu: float) -> RemovableHandle:
    """FedProx (Li et al. 2020): before every step of ``optimizer``, add ``mu (w - w_global)``,
    the gradient of ``(mu / 2) ||w - w_global||^2``, to each parameter's gradient, with
    ``w_global`` the parameters as they are now (the global model, before local training).

    Under DP-SGD the gradient the step sees is already the private one: Opacus's DPOptimizer
    and fedllm's book-keeping clip each example's gradient and add the noise before they call
    this optimizer's ``step``, so the term is added outside clipping and noise. That keeps the
    guarantee: the term depends only on the current weights (themselves the result of earlier
    private steps) and on the global model and ``mu``, both known to the server; it reads no
    example. The update is therefore post-processing of the Gaussian mechanism's output plus
    data-independent terms, and the accountant counts the same steps at the same noise and
    sampling rate. (Inside the per-example clipping the term would instead share, and distort,
    each example's clipping bound.) Without DP it equals adding the term to the loss.
    Returns the hook's handle: ``remove()`` it after training."""
    anchors = [(p, p.detach().clone()) for group in optimizer.param_groups for p in group["params"]]

    def add_proximal_gradient(
        opt: torch.optim.Optimizer, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> None:
        with torch.no_grad():
            for p, w_global in anchors:
                if p.grad is not None:  # a parameter without a gradient is not stepped
                    p.grad.add_(p - w_global, alpha=mu)

    return optimizer.register_step_pre_hook(add_proximal_gradient)


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
    n: int, m: int, batch_size: int, dp: DPParams | None, rng: np.random.Generator, seed: int
) -> Iterator[torch.Tensor]:
    """Row indices (of ``n`` rows) of one epoch's batches. DP: ceil(m / B) Poisson draws at
    rate 1 / ceil(m / B) from ``rng`` (the secret source), ``m`` the schedule's count; plain
    training: a shuffle of the rows from the public ``seed``."""
    count = math.ceil(m / batch_size) if m else 0
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
    logits = _logits(model, data, batch_size)
    loss = float(task.loss(logits, data.y))
    scores = task.scores(logits)
    correct = _correct(task, scores, data.y)
    metrics = {"loss": loss, "accuracy": float(correct.mean())}
    metrics.update(task.extra_metrics(metrics))
    labels = data.y.numpy()
    if task.num_classes == 2 and len(np.unique(labels)) == 2:
        from sklearn.metrics import roc_auc_score

        metrics["auc"] = float(roc_auc_score(labels, scores.numpy()))
    return metrics


@torch.no_grad()
def per_example_accuracy(
    task: Task, model: torch.nn.Module, data: Split, batch_size: int = 1024
) -> torch.Tensor:
    """Each example's accuracy, in [0, 1]: (N,). For a sequence, the fraction of its positions
    predicted right, so the mean over examples is the accuracy :func:`evaluate` reports (every
    sequence has the same length). One example moves the sum by at most 1, whatever the model:
    what a noised evaluation's sensitivity rests on."""
    correct = _correct(task, task.scores(_logits(model, data, batch_size)), data.y)
    return correct.reshape(len(data), -1).mean(dim=1)


def _logits(model: torch.nn.Module, data: Split, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model(data.x[i : i + batch_size]) for i in range(0, len(data), batch_size)])


def _correct(task: Task, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1.0 where the prediction is the label, else 0.0 (the label's shape)."""
    predictions = (scores >= 0.5).long() if task.num_classes == 2 else scores.argmax(dim=-1)
    return (predictions == y).float()
