"""Where a site's DP randomness comes from: fresh OS entropy, never anything the server knows.

DP-SGD's guarantee assumes the party that sees the update cannot predict the Gaussian noise or
which rows were sampled. The run config (its ``seed`` included) comes from the coordinator, so
noise and Poisson sampling are drawn from generators seeded with ``os.urandom`` (the kernel's
CSPRNG) at every training, as is the noise of the site's other releases (its example count,
its evaluations: :func:`release_generator`). The generators that expand those seeds are
PyTorch's and NumPy's (Opacus's ``secure_mode`` needs ``torchcsprng``, which does not install
here); the coordinator never sees a raw draw, only noised sums.

``reproducible-noise`` (research only) derives the seeds from the public run config instead:
every site policy refuses it unless it says ``allow-reproducible-noise = true``, and a run's
report then opens by saying the run is not private.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class NoiseSource:
    """The generators of one local training: Gaussian noise (``noise``, PyTorch's, on the
    training device) and Poisson batch sampling (``sampling``, NumPy's)."""

    noise: torch.Generator
    sampling: np.random.Generator
    secret: bool

    @classmethod
    def from_os_entropy(cls, device: torch.device | str = "cpu") -> NoiseSource:
        """Fresh seeds from the OS's CSPRNG: unpredictable to anyone outside this process."""
        torch_seed = int.from_bytes(os.urandom(8), "little")
        numpy_seed = int.from_bytes(os.urandom(16), "little")
        return cls(_torch_generator(device, torch_seed), np.random.default_rng(numpy_seed), True)

    @classmethod
    def reproducible(cls, seed: int, device: torch.device | str = "cpu") -> NoiseSource:
        """Seeds derived from ``seed`` (public): the same seed gives the same noise and batches.
        Not private against anyone who knows the seed; for tests and research only."""
        seq = np.random.SeedSequence([0x6E6F697365, seed & (2**63 - 1)])
        torch_seed, numpy_seed = (int(s) for s in seq.generate_state(2, np.uint64))
        return cls(_torch_generator(device, torch_seed), np.random.default_rng(numpy_seed), False)


def _torch_generator(device: torch.device | str, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def release_generator(seed: int | None) -> np.random.Generator:
    """The generator of one Gaussian release besides DP-SGD (the example count, an evaluation):
    fresh OS entropy, or under reproducible-noise (``seed`` given) derived from ``seed``."""
    if seed is None:
        return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    return np.random.default_rng(np.random.SeedSequence([0x72656C65617365, seed & (2**63 - 1)]))
