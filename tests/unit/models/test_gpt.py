"""The small GPT: causal, bounded by its context, and its per-sequence loss."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from fedllm.errors import ConfigError
from fedllm.models.gpt import GPTArgs, TinyGPT, sequence_loss

ARGS = GPTArgs(context_length=8, layers=1, heads=2, width=16)


def test_a_position_sees_no_later_byte() -> None:
    torch.manual_seed(0)
    model = TinyGPT(ARGS).eval()
    tokens = torch.randint(0, 256, (1, 8))
    changed = tokens.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 256
    torch.testing.assert_close(model(tokens)[:, :5], model(changed)[:, :5])
    assert not torch.allclose(model(tokens)[:, 5:], model(changed)[:, 5:])


def test_more_tokens_than_the_context_are_refused() -> None:
    with pytest.raises(ValueError, match="T <= 8"):
        TinyGPT(ARGS)(torch.zeros(1, 9, dtype=torch.int64))


def test_width_must_split_into_the_heads() -> None:
    with pytest.raises(ConfigError, match="`lm-width` \\(10\\) must be a multiple of `lm-heads`"):
        GPTArgs(context_length=8, layers=1, heads=3, width=10)


def test_sequence_loss_is_the_mean_over_each_sequence() -> None:
    logits = torch.randn(3, 8, 256, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 256, (3, 8), generator=torch.Generator().manual_seed(2))
    per_seq = sequence_loss(logits, y, reduction="none")
    expected = torch.stack([F.cross_entropy(logits[i], y[i]) for i in range(3)])
    torch.testing.assert_close(per_seq, expected)
    torch.testing.assert_close(sequence_loss(logits, y, "sum"), expected.sum())
    torch.testing.assert_close(sequence_loss(logits, y), expected.mean())
