"""One round of a site's local training, as Flower's Opacus example does it, and the privacy
arithmetic the example leaves out (the schedule's noise and the true cumulative epsilon).

The example's ``fit``: a DataLoader over the site's rows, ``PrivacyEngine(secure_mode=False)``
made fresh every round, ``make_private`` with its defaults (hooks, Poisson sampling), the usual
loop, then ``privacy_engine.get_epsilon(delta)``, which it prints: the epsilon of THIS round
alone. What differs from the example, on purpose: the model, loss and data are fedllm's (the
same for both sides), and the optimizer is plain SGD as fedllm's (the example's momentum 0.9
at rate 0.001 suits its CIFAR net; one grid of learning rates then fits both sides).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader, TensorDataset

from fedllm.tasks import Split, Task


@dataclass(frozen=True)
class PeerDP:
    """The DP-SGD settings of a site's rounds."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str = "prv"


@dataclass(frozen=True)
class PeerRound:
    """What one round did: mean loss, steps, Poisson rate, and the epsilon the example prints
    (a fresh engine's, for this round only; None without DP)."""

    loss: float
    steps: int
    sample_rate: float
    printed_epsilon: float | None


def train_round(
    task: Task,
    model: torch.nn.Module,
    data: Split,
    batch_size: int,
    learning_rate: float,
    epochs: int,
    dp: PeerDP | None,
    report_epsilon: bool = True,
) -> PeerRound:
    """Train ``model`` in place for ``epochs`` passes (plain when ``dp`` is None).
    ``report_epsilon = False`` skips the engine's epsilon (a PRV evaluation, about 0.1 s; the
    tuning runs have no use for it): training is the same either way."""
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
        TensorDataset(data.x, data.y), batch_size=batch_size, shuffle=True
    )
    sample_rate = 1.0 / len(loader)  # what DPDataLoader samples with
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    model.train()
    module: torch.nn.Module = model
    engine = None
    losses: list[float] = []
    steps = 0
    with warnings.catch_warnings():
        # As the example: Opacus warns that secure_mode is off, and about its hooks, each round.
        warnings.filterwarnings("ignore", category=UserWarning)
        if dp is not None:
            engine = PrivacyEngine(accountant=dp.accountant, secure_mode=False)
            module, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm,
            )
        for _ in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = task.loss(module(xb), yb)
                loss.backward()
                optimizer.step()
                steps += 1
                if len(yb):
                    losses.append(float(loss))
        printed = None
        if engine is not None and dp is not None and report_epsilon:
            with np.errstate(divide="ignore"):  # PRV at sample rate 1 (a site smaller than B)
                printed = float(engine.get_epsilon(delta=dp.delta))
    if engine is not None:
        module._close()  # type: ignore[operator]  # removes the hooks; model keeps its weights
    mean_loss = sum(losses) / len(losses) if losses else math.nan
    return PeerRound(mean_loss, steps, sample_rate, printed)


def noise_for_schedule(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
) -> float:
    """Opacus's own calibration: the noise multiplier whose epsilon over all ``steps`` (every
    round the site plans) is at most ``target_epsilon``."""
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )


def cumulative_epsilon(
    history: list[tuple[float, float, int]], delta: float, accountant: str
) -> float:
    """The true epsilon of every round so far: one Opacus accountant over the whole history
    of ``(noise multiplier, sample rate, steps)``, which the example's fresh engines forget."""
    merged: list[tuple[float, float, int]] = []
    for sigma, rate, steps in history:  # as an accountant's own step() joins equal rounds
        if merged and merged[-1][:2] == (sigma, rate):
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((sigma, rate, steps))
    if not merged:
        return 0.0
    acct = create_accountant(mechanism=accountant)
    acct.history = merged
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acct.get_epsilon(delta=delta))
