"""A base checkpoint describes itself: the model comes back with its architecture, and a file
that is not one is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedllm.errors import DataError
from fedllm.models.base_checkpoint import load_base_model, save_base
from fedllm.models.gpt import GPTArgs, TinyGPT


def test_the_saved_model_comes_back_with_its_architecture(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = TinyGPT(GPTArgs(context_length=8, layers=1, heads=2, width=16))
    save_base(model, tmp_path / "base.pt", {"steps": 1})
    loaded = load_base_model(tmp_path / "base.pt")
    assert loaded.args == model.args
    tokens = torch.randint(0, 256, (2, 8))
    torch.testing.assert_close(loaded(tokens), model(tokens))


def test_a_plain_state_dict_is_not_a_base(tmp_path: Path) -> None:
    model = TinyGPT(GPTArgs(context_length=8, layers=1, heads=2, width=16))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(DataError, match="not a fedllm text base checkpoint"):
        load_base_model(tmp_path / "weights.pt")
