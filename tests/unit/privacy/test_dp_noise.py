"""The DP step of the production training path (``train_local``) checked statistically, step
by step: the noise has standard deviation ``noise_multiplier * clip / expected batch`` and the
batches are Poisson samples (sizes ~ Binomial(n, q)).

A probe makes every step observable: a linear model without bias and the loss ``-mean(w . x)``,
so every row's gradient is ``-x`` whatever the weights are, and every row is the same vector
``x = 10 e_0`` (norm 10, clipped to ``clip``). One SGD step at learning rate 1 then moves ``w`` by
``(|B| clip e_0 + N(0, (sigma clip)^2 I)) / E[B]``: coordinate 0 reads the realized batch size,
the other coordinates are pure noise. A global optimizer hook records every step.

These fail on the bugs a reader cannot see in a diff: noise 0 handed to the DP engine (the
per-step spread is 0), division by the realized batch size instead of the expected one (the
spread follows ``1/|B|``, and at noise 0 coordinate 0 reads a constant), and fixed-size batches
instead of Poisson sampling (no variance in the batch sizes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from fedllm.config import RunConfig
from fedllm.privacy import DPParams
from fedllm.tasks.base import Source, Split, Task
from fedllm.training import LocalTraining, train_local

DIM = 20_000  # noise coordinates per step: the spread is estimated to ~0.5%
N, BATCH = 64, 8  # q = 1/8, expected batch 8, 8 steps an epoch


class _Probe(Task):
    """``-mean(w . x)``: each row's gradient is ``-x``, independent of ``w``."""

    name: ClassVar[str] = "probe"
    num_classes: ClassVar[int] = 2

    def load_source(self, cfg: RunConfig, path: str) -> Source:
        raise NotImplementedError

    def build_model(self, cfg: RunConfig, input_shape: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        per_row = -logits.squeeze(-1)
        return per_row.mean() if reduction == "mean" else per_row.sum()


@pytest.fixture
def steps() -> Iterator[list[torch.Tensor]]:
    """Every optimizer step's weights, in order (a global hook: the training builds its own)."""
    seen: list[torch.Tensor] = []

    def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        seen.append(optimizer.param_groups[0]["params"][0].detach().clone().flatten())

    handle = register_optimizer_step_post_hook(record)
    yield seen
    handle.remove()


def _train(sigma: float, clip: float, mode: str, epochs: int, n: int = N) -> torch.Tensor:
    """Per-step updates (steps, DIM) of one DP training of the probe."""
    x = torch.zeros(n, DIM)
    x[:, 0] = 10.0
    model = nn.Linear(DIM, 1, bias=False)
    nn.init.zeros_(model.weight)
    start = model.weight.detach().clone().flatten()
    train_local(
        _Probe(),
        model,
        Split(x, torch.zeros(n, dtype=torch.int64)),
        LocalTraining(epochs, BATCH, 1.0, seed=0),
        DPParams(sigma, clip, "rdp", grad_sample_mode=mode),
    )
    return start


def _updates(start: torch.Tensor, seen: list[torch.Tensor]) -> torch.Tensor:
    weights = torch.stack([start, *seen])
    return weights[1:] - weights[:-1]  # (steps, DIM)


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
def test_each_step_adds_noise_of_std_sigma_clip_over_the_expected_batch(
    mode: str, steps: list[torch.Tensor]
) -> None:
    sigma, clip = 1.3, 0.5
    updates = _updates(_train(sigma, clip, mode, epochs=2), steps)
    assert len(updates) == 2 * N // BATCH
    expected = sigma * clip / BATCH  # E[B] = n q = 8
    spread = updates[:, 1:].std(dim=1)  # (steps,): the noise coordinates of each step
    # 8 standard errors of the estimate; 1/|B| division would miss it unless every step's
    # Poisson batch had exactly 8 rows (probability ~1e-13), noise 0 misses it always.
    assert torch.all((spread / expected - 1).abs() < 0.04), spread / expected
    # The noise coordinates are centred: nothing but noise moves them.
    assert float(updates[:, 1:].mean().abs()) < 4 * expected / np.sqrt(updates[:, 1:].numel())


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
def test_batches_are_poisson_samples_with_binomial_sizes(
    mode: str, steps: list[torch.Tensor]
) -> None:
    n, clip = 200, 1.0
    start = _train(0.0, clip, mode, epochs=12, n=n)
    updates = _updates(start, steps)  # q = 1 / ceil(200 / 8) = 1/25: 300 steps, E[B] = 8
    sizes = (updates[:, 0] * 8 / clip).round().numpy()  # each step moves e_0 by |B| clip / E[B]
    assert np.allclose(updates[:, 0].numpy() * 8 / clip, sizes, atol=1e-3)
    q = 1 / 25
    mean, var = n * q, n * q * (1 - q)
    assert abs(sizes.mean() - mean) < 4 * np.sqrt(var / len(sizes))
    assert 0.7 * var < sizes.var() < 1.3 * var  # Binomial(n, q): fixed-size batches have none
    assert sizes.min() <= 3 and sizes.max() >= 13  # the tails a Binomial(200, 1/25) reaches
