"""DP-SGD for one round of local training, with the per-sample-gradient strategy chosen for the
model: every strategy computes the same clipped, noised gradient (same guarantee, same
accounting); they differ only in speed.

- ``bookkeeping``: fedllm's own book-keeping clipping (:mod:`fedllm.privacy.bookkeeping`), one
  backward pass and exact per-sample norms without Opacus's hooks; Linear and Conv2d layers.
- ``hooks``, ``ew``, ``functorch``, ``ghost``: Opacus's ``grad_sample_mode``s, for any layer
  Opacus supports (``ghost`` is Opacus's fast gradient clipping: two backward passes).
- ``auto`` (the default): ``bookkeeping`` when every trainable layer supports it, else
  Opacus's ``hooks``. ``benchmarks/dp_overhead.py`` measures the choice against the others.

The model passed in stays the model: parameters are updated in place, so ``model.state_dict()``
never carries Opacus's ``_module.`` prefix.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedllm.privacy.bookkeeping import BookkeepingDPSGD, unsupported_layers

LossFn = Callable[..., torch.Tensor]  # (logits, y, reduction="mean") -> loss
GRAD_SAMPLE_MODES = ("auto", "bookkeeping", "hooks", "ew", "functorch", "ghost")


@dataclass(frozen=True)
class DPParams:
    """What the server asked for and the site accepted: noise, clipping, accountant; and how
    per-sample gradients are computed (speed only)."""

    noise_multiplier: float
    max_grad_norm: float
    accountant: str = "prv"
    poisson_sampling: bool = True
    grad_sample_mode: str = "auto"


class PrivateStep(ABC):
    """One DP-SGD step on a batch: forward with :attr:`module`, then :meth:`backward_and_step`."""

    module: nn.Module

    @abstractmethod
    def backward_and_step(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of the batch, per-sample clipped and noised gradients applied; returns the loss."""

    @abstractmethod
    def close(self) -> None:
        """Detach hooks so the plain model can be trained or wrapped again."""


def choose_mode(model: nn.Module, requested: str) -> str:
    """The strategy for ``model``: ``requested``, or for ``auto`` the fastest that supports it."""
    if requested not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"`grad-sample-mode` must be one of {', '.join(GRAD_SAMPLE_MODES)}, got {requested!r}"
        )
    unsupported = unsupported_layers(model)
    if requested == "bookkeeping" and unsupported:
        raise ValueError(
            f"`grad-sample-mode` bookkeeping does not support layer(s) {', '.join(unsupported)}; "
            "use auto or an Opacus mode (hooks, ew, functorch, ghost)"
        )
    if requested == "auto":
        return "hooks" if unsupported else "bookkeeping"
    return requested


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: LossFn,
    num_examples: int,
    batch_size: int,
    params: DPParams,
    generator: torch.Generator,
) -> PrivateStep:
    """DP-SGD machinery for ``model``: per-sample clipping to ``max_grad_norm``, Gaussian noise
    of std ``noise_multiplier * max_grad_norm`` (Abadi et al. 2016) drawn from ``generator``
    (secret: :class:`fedllm.privacy.randomness.NoiseSource`), the sum divided by the expected
    batch size ``int(n * q)`` with ``q = 1 / ceil(n / batch_size)``, as Opacus does."""
    mode = choose_mode(model, params.grad_sample_mode)
    if mode == "bookkeeping":
        return _Bookkeeping(model, optimizer, loss, num_examples, batch_size, params, generator)
    return _Opacus(model, optimizer, loss, num_examples, batch_size, params, mode, generator)


class _Bookkeeping(PrivateStep):
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: LossFn,
        num_examples: int,
        batch_size: int,
        params: DPParams,
        generator: torch.Generator,
    ) -> None:
        batches = -(-num_examples // batch_size)
        self.module, self.optimizer, self.loss = model, optimizer, loss
        self.engine = BookkeepingDPSGD(
            model,
            params.noise_multiplier,
            params.max_grad_norm,
            expected_batch_size=int(num_examples * (1 / batches)),
            generator=generator,
        )

    def backward_and_step(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # No zero_grad: privatize() sets every parameter's gradient, whatever autograd left.
        value = self.loss(logits, y) if len(y) else torch.tensor(float("nan"))
        if len(y):  # an empty Poisson batch still takes a step: noise only
            value.backward()
        self.engine.privatize(len(y))
        self.optimizer.step()
        return value.detach()

    def close(self) -> None:
        self.engine.close()


class _Criterion(nn.Module):
    """A task's loss as the criterion module Opacus's ghost clipping wraps."""

    def __init__(self, loss: LossFn) -> None:
        super().__init__()
        self.loss, self.reduction = loss, "mean"

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, y, reduction=self.reduction)


class _Opacus(PrivateStep):
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: LossFn,
        num_examples: int,
        batch_size: int,
        params: DPParams,
        mode: str,
        generator: torch.Generator,
    ) -> None:
        from opacus import PrivacyEngine

        # Opacus reads the sampling rate and expected batch size off a loader; fedllm samples the
        # batches itself (vectorized Poisson sampling), so this loader is never iterated.
        sizes: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
            TensorDataset(torch.zeros(num_examples)), batch_size=batch_size
        )
        criterion = _Criterion(loss)
        with warnings.catch_warnings():
            # Documented in README: the noise generator is PyTorch's, seeded from OS entropy
            # (fedllm.privacy.randomness); Opacus's secure_mode needs torchcsprng (unavailable).
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            wrapped = PrivacyEngine(accountant=params.accountant).make_private(
                module=model,
                optimizer=optimizer,
                data_loader=sizes,
                criterion=criterion,
                noise_multiplier=params.noise_multiplier,
                max_grad_norm=params.max_grad_norm,
                poisson_sampling=False,
                grad_sample_mode=mode,
                noise_generator=generator,
            )
        self.module, self.optimizer = wrapped[0], wrapped[1]
        self.criterion = wrapped[2] if mode == "ghost" else criterion

    def backward_and_step(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = self.criterion(logits, y)
        value.backward()  # ghost: Opacus's two backward passes
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        per_sample = getattr(value, "loss_per_sample", value)
        return torch.as_tensor(per_sample).mean().detach()

    def close(self) -> None:
        close = getattr(self.module, "_close", None)
        if callable(close):
            close()
