"""LoRA adapters: only they train; at zero they are the base; merging keeps the function."""

from __future__ import annotations

import copy

import pytest
import torch

from fedllm.models import LoRALinear, LoRASpec, adapter_parameters, add_lora, merge_lora
from fedllm.models.gpt import GPTArgs, TinyGPT

ARGS = GPTArgs(context_length=16, layers=2, heads=2, width=16)
SPEC = LoRASpec(rank=4, alpha=8.0, targets=("q", "k", "v", "o", "up", "down"))


def _tokens() -> torch.Tensor:
    return torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))


def test_only_adapter_parameters_require_grad() -> None:
    model = add_lora(TinyGPT(ARGS), SPEC)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_parameters(model))
    # 6 projections x 2 blocks x (A and B)
    assert len(trainable) == 24
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 12


def test_zero_adapters_give_the_base_model() -> None:
    torch.manual_seed(0)
    base = TinyGPT(ARGS)
    adapted = add_lora(copy.deepcopy(base), SPEC)
    with torch.no_grad():
        for p in adapter_parameters(adapted).values():
            p.zero_()
    torch.testing.assert_close(adapted(_tokens()), base(_tokens()))


def test_merged_and_unmerged_forward_agree() -> None:
    model = add_lora(TinyGPT(ARGS), SPEC)
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.normal_(0, 0.2)
    unmerged = model(_tokens())
    merged = merge_lora(copy.deepcopy(model))
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(TinyGPT(ARGS).state_dict())  # the base's layout
    assert not torch.allclose(unmerged, TinyGPT(ARGS)(_tokens()))
    torch.testing.assert_close(merged(_tokens()), unmerged, rtol=1e-4, atol=1e-5)


def test_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="qkv"):
        add_lora(TinyGPT(ARGS), LoRASpec(4, 8.0, ("qkv",)))
