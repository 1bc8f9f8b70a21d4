"""Low-rank adapters (LoRA, Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen ``nn.Linear`` ``W`` gains a trainable update ``(alpha / r) * B A`` with ``A`` (r x in)
and ``B`` (out x r), ``B`` starting at zero so the adapted model starts equal to the base. Both
factors are plain ``nn.Linear`` layers, so any per-sample-gradient engine that handles Linear
layers (fedllm's book-keeping DP-SGD, Opacus) clips them exactly; the frozen base is ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoRASpec:
    """Where and how big: adapted Linear layers are those whose own name is in ``targets``."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"`lora-rank` must be >= 1, got {self.rank}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"`lora-alpha` must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError("`lora-targets` must name at least one layer")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """``base(x) + scaling * lora_b(lora_a(x))``; ``base`` frozen."""

    def __init__(self, base: nn.Linear, rank: int, scaling: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return self.base(x) + self.lora_b(self.lora_a(x)) * self.scaling  # type: ignore[no-any-return]

    def merged(self) -> nn.Linear:
        """One Linear computing the same function: ``W + scaling * B A``."""
        layer = nn.Linear(
            self.base.in_features, self.base.out_features, bias=self.base.bias is not None
        )
        with torch.no_grad():
            layer.weight.copy_(
                self.base.weight + self.scaling * self.lora_b.weight @ self.lora_a.weight
            )
            if self.base.bias is not None:
                layer.bias.copy_(self.base.bias)
        return layer


def add_lora(model: nn.Module, spec: LoRASpec) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap each targeted Linear in a LoRALinear, in
    place; returns ``model``. A target that names no Linear layer is an error."""
    model.requires_grad_(False)
    found: set[str] = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in spec.targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, spec.rank, spec.scaling))
                found.add(name)
    missing = sorted(set(spec.targets) - found)
    if missing:
        raise ValueError(f"`lora-targets` {missing} name no Linear layer of the model")
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged Linear, in place: the plain model's layout (the
    base checkpoint's keys), the adapted function. Returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    return model


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter factors by state-dict name."""
    return {
        name: p
        for name, p in model.named_parameters()
        if name.endswith((".lora_a.weight", ".lora_b.weight"))
    }
