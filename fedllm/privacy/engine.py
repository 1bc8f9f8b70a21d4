"""Opacus DP-SGD wrapping for one round of local training.

The model passed in stays the model: Opacus wraps it in a ``GradSampleModule`` for the round,
but parameters are updated in place, so ``model.state_dict()`` has no ``_module.`` prefix.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader

from fedllm.privacy.accounting import DPEvent


@dataclass(frozen=True)
class DPParams:
    """What the server asked for and the site accepted: noise, clipping, accountant."""

    noise_multiplier: float
    max_grad_norm: float
    accountant: str = "prv"
    poisson_sampling: bool = True


@dataclass
class PrivateRound:
    """The wrapped model, optimizer and loader of one round, and the engine that counts."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader[tuple[torch.Tensor, ...]]
    engine: PrivacyEngine

    def events(self) -> list[DPEvent]:
        """The DP-SGD steps actually taken this round, as the engine's accountant saw them."""
        return [DPEvent(float(n), float(q), int(s)) for n, q, s in self.engine.accountant.history]

    def close(self) -> None:
        """Detach Opacus's hooks so the plain model can be trained or wrapped again."""
        close = getattr(self.module, "_close", None)
        if callable(close):
            close()


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader[tuple[torch.Tensor, ...]],
    params: DPParams,
) -> PrivateRound:
    """Wrap for DP-SGD: Poisson sampling, per-sample clipping to ``max_grad_norm``, Gaussian
    noise of std ``noise_multiplier * max_grad_norm`` (Abadi et al. 2016)."""
    with warnings.catch_warnings():
        # Documented in README: noise comes from PyTorch's PRNG (torchcsprng is unavailable).
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=params.accountant)
        module, private_optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=params.noise_multiplier,
            max_grad_norm=params.max_grad_norm,
            poisson_sampling=params.poisson_sampling,
        )
    return PrivateRound(module, private_optimizer, private_loader, engine)
