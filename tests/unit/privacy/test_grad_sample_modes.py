"""Every per-sample-gradient strategy computes the same clipped, noised update as Opacus's
reference (hooks mode), on the same seed, batch and model; only the speed differs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from fedllm.privacy import DPParams, choose_mode, make_private
from fedllm.privacy.bookkeeping import BookkeepingDPSGD
from fedllm.tasks.base import Split
from fedllm.tasks.tabular import BreastCancer, TabularModel
from fedllm.tasks.vision import Mnist, SmallCNN
from fedllm.training import LocalTraining, train_local

MODES = ["bookkeeping", "hooks", "ew", "functorch", "ghost"]
NAMES = ["logistic", "mlp", "cnn", "sequence", "wide-sequence"]


class SequenceModel(nn.Module):
    """A Linear layer applied at every position of a sequence (B, T, d): short sequences of
    wide rows take the Gram-matrix (ghost) path, long ones of narrow rows the materialized."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(features, hidden), nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, features) -> (B, 10)
        return self.head(torch.tanh(self.embed(x)).mean(1))


Case = tuple[Callable[[], nn.Module], torch.Tensor, torch.Tensor, Callable[..., torch.Tensor]]


def _case(name: str) -> Case:
    gen = torch.Generator().manual_seed(3)
    if name == "cnn":
        x, y = torch.randn(12, 1, 28, 28, generator=gen), torch.randint(0, 10, (12,), generator=gen)
        return (lambda: SmallCNN(10)), x, y, Mnist().loss
    if name == "sequence":  # T=12, 3 -> 4 features: per-sample gradients are formed
        x, y = torch.randn(12, 12, 3, generator=gen), torch.randint(0, 10, (12,), generator=gen)
        return (lambda: SequenceModel(3, 4)), x, y, Mnist().loss
    if name == "wide-sequence":  # T=4, 20 -> 16 features: Gram matrices instead
        x, y = torch.randn(12, 4, 20, generator=gen), torch.randint(0, 10, (12,), generator=gen)
        return (lambda: SequenceModel(20, 16)), x, y, Mnist().loss
    hidden = 0 if name == "logistic" else 8
    x, y = torch.randn(12, 6, generator=gen), torch.randint(0, 2, (12,), generator=gen)
    return (lambda: TabularModel(6, hidden)), x, y, BreastCancer().loss


def _update(name: str, mode: str, noise: float, clip: float) -> dict[str, torch.Tensor]:
    build, x, y, loss = _case(name)
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    draws = torch.Generator().manual_seed(123)  # the same noise draws for every mode
    step = make_private(
        model, optimizer, loss, 48, 12, DPParams(noise, clip, "rdp", True, mode), draws
    )
    step.backward_and_step(step.module(x), y)
    step.close()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", [m for m in MODES if m != "hooks"])
@pytest.mark.parametrize(("noise", "clip"), [(0.0, 0.05), (1.3, 0.05), (0.7, 1e6)])
def test_every_mode_gives_the_reference_update(
    name: str, mode: str, noise: float, clip: float
) -> None:
    reference = _update(name, "hooks", noise, clip)
    ours = _update(name, mode, noise, clip)
    assert set(ours) == set(reference)  # no `_module.` keys
    for key, value in ours.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bookkeeping_norms_are_the_exact_per_sample_norms_and_clipping_bounds_them(
    name: str,
) -> None:
    build, x, y, loss = _case(name)
    torch.manual_seed(0)
    reference = GradSampleModule(build())
    loss(reference(x), y).backward()
    exact = torch.stack(
        [p.grad_sample.flatten(1).norm(dim=1) for p in reference.parameters()]  # type: ignore[union-attr]
    ).norm(dim=0)
    torch.manual_seed(0)
    model = build()
    engine = BookkeepingDPSGD(model, 0.0, 0.01, expected_batch_size=len(y))
    loss(model(x), y).backward()
    norms = engine.per_sample_norms(len(y))
    torch.testing.assert_close(norms, exact, rtol=1e-4, atol=1e-7)
    clip = (0.01 / (norms + 1e-6)).clamp(max=1.0)
    assert (norms > 0.01).any() and torch.all(norms * clip <= 0.01 + 1e-7)
    engine.close()


def test_auto_picks_bookkeeping_where_supported_and_opacus_elsewhere() -> None:
    assert choose_mode(SmallCNN(10), "auto") == "bookkeeping"
    norm = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert choose_mode(norm, "auto") == "hooks"
    with pytest.raises(ValueError, match="bookkeeping does not support layer.* 1"):
        choose_mode(norm, "bookkeeping")
    with pytest.raises(ValueError, match="`grad-sample-mode` must be one of"):
        choose_mode(norm, "fastest")


@pytest.mark.parametrize("mode", MODES)
def test_accounting_is_the_same_for_every_mode(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    data = Split(torch.randn(100, 6, generator=gen), torch.randint(0, 2, (100,), generator=gen))
    torch.manual_seed(0)
    result = train_local(
        BreastCancer(),
        TabularModel(6, 4),
        data,
        LocalTraining(2, 32, 0.1, 0),
        DPParams(1.1, 1.0, "rdp", True, mode),
    )
    assert result.steps == 8
    assert [(e.noise_multiplier, e.sample_rate, e.steps) for e in result.events] == [(1.1, 0.25, 8)]
