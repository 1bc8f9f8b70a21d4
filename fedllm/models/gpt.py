"""A small byte-level GPT: a decoder-only transformer (pre-norm blocks, learned positions,
untied head), as in nanoGPT (Karpathy) after GPT-2 (Radford et al. 2019), small enough to
train with DP-SGD on a CPU.

Its linear projections are named for LoRA targets (:data:`LORA_TARGETS`); :class:`GPTArgs`
is what a base checkpoint records and a run must match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from fedllm.errors import ConfigError

if TYPE_CHECKING:
    from fedllm.config import RunConfig

VOCAB = 256  # bytes
# The projections LoRA may adapt. Attention: q, k, v, o; MLP: up, down.
LORA_TARGETS = ("q", "k", "v", "o", "up", "down")
# Each architecture setting's run-config key, as errors name it.
RUN_CONFIG_KEYS = {
    "context_length": "context-length",
    "layers": "lm-layers",
    "heads": "lm-heads",
    "width": "lm-width",
    "vocab": "vocab",
}


@dataclass(frozen=True)
class GPTArgs:
    """The architecture: what a base checkpoint records and a run must match."""

    context_length: int
    layers: int
    heads: int
    width: int
    vocab: int = VOCAB

    def __post_init__(self) -> None:
        for name in ("context_length", "layers", "heads", "width"):
            if getattr(self, name) < 1:
                key = RUN_CONFIG_KEYS[name]
                raise ConfigError(f"`{key}` must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ConfigError(
                f"`lm-width` ({self.width}) must be a multiple of `lm-heads` ({self.heads})"
            )

    @classmethod
    def of(cls, cfg: RunConfig) -> GPTArgs:
        return cls(cfg.context_length, cfg.lm_layers, cfg.lm_heads, cfg.lm_width)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.o = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        b, t, c = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, C/H)
            return z.view(b, t, self.heads, c // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True
        )
        return self.o(y.transpose(1, 2).reshape(b, t, c))  # type: ignore[no-any-return]


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        x = x + self.attn(self.ln1(x))
        return x + self.down(F.gelu(self.up(self.ln2(x))))  # type: ignore[no-any-return]


class TinyGPT(nn.Module):
    """A GPT-2-style decoder (pre-norm blocks, learned positions, untied head), nanoGPT-like."""

    def __init__(self, args: GPTArgs) -> None:
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab, args.width)
        self.position = nn.Embedding(args.context_length, args.width)
        self.blocks = nn.ModuleList(Block(args.width, args.heads) for _ in range(args.layers))
        self.ln = nn.LayerNorm(args.width)
        self.head = nn.Linear(args.width, args.vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) int64 -> (B, T, V)
        if tokens.dim() != 2 or tokens.shape[1] > self.args.context_length:
            raise ValueError(
                f"expected token ids (B, T) with T <= {self.args.context_length}, "
                f"got shape {tuple(tokens.shape)}"
            )
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.position(positions)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))  # type: ignore[no-any-return]


def sequence_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per sequence: the mean next-byte cross-entropy over its positions (the per-example loss
    DP-SGD clips); ``reduction`` ("mean", "sum" or "none") applies over sequences."""
    b, t, v = logits.shape  # (B, T, V), y (B, T)
    per_seq = F.cross_entropy(logits.reshape(b * t, v), y.reshape(b * t), reduction="none")
    per_seq = per_seq.view(b, t).mean(1)  # (B,)
    if reduction == "none":
        return per_seq
    return per_seq.sum() if reduction == "sum" else per_seq.mean()
