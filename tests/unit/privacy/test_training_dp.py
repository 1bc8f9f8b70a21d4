"""DP-SGD tested as Opacus tests it: against vanilla training and across seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedllm.privacy import DPParams
from fedllm.tasks.base import Split
from fedllm.tasks.tabular import BreastCancer, TabularModel
from fedllm.training import LocalTraining, poisson_rows, train_local

TASK = BreastCancer()


def _data(n: int = 128, features: int = 6) -> Split:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=gen)
    y = (x[:, 0] + 0.3 * torch.randn(n, generator=gen) > 0).long()
    return Split(x, y)


def _model(hidden: int = 4) -> TabularModel:
    torch.manual_seed(42)
    return TabularModel(6, hidden)


def _train(
    dp: DPParams | None, seed: int = 1, noise_seed: int | None = None
) -> dict[str, torch.Tensor]:
    model = _model()
    train_local(TASK, model, _data(), LocalTraining(2, 32, 0.3, seed, noise_seed=noise_seed), dp)
    return model.state_dict()


def _plain(optimizer: str, lr: float) -> dict[str, torch.Tensor]:
    """Two epochs of plain training, batches of 32 in order, written out by hand."""
    reference = _model()
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(
        reference.parameters(), lr=lr
    )
    data = _data()
    for _ in range(2):
        for i in range(0, len(data), 32):
            opt.zero_grad()
            TASK.loss(reference(data.x[i : i + 32]), data.y[i : i + 32]).backward()
            opt.step()
    return reference.state_dict()


def _private_without_noise(optimizer: str, lr: float) -> dict[str, torch.Tensor]:
    """DP training at zero noise and no clipping (batches in order, as in :func:`_plain`)."""
    model = _model()
    dp = DPParams(noise_multiplier=0.0, max_grad_norm=1e9, poisson_sampling=False)
    train_local(TASK, model, _data(), LocalTraining(2, 32, lr, 1, optimizer), dp)
    return model.state_dict()


def test_zero_noise_and_no_clipping_equals_plain_training() -> None:
    private, plain = _private_without_noise("sgd", 0.3), _plain("sgd", 0.3)
    assert set(private) == set(plain)  # no `_module.` keys leak out of the wrapped model
    for key, value in private.items():
        torch.testing.assert_close(value, plain[key], rtol=1e-5, atol=1e-6)


def test_adam_takes_the_same_private_gradient_as_sgd() -> None:
    """With zero noise and no clipping, DP training with Adam equals plain Adam step by step
    (the optimizer only post-processes the privatized gradient), and differs from SGD."""
    private, plain = _private_without_noise("adam", 0.05), _plain("adam", 0.05)
    for key, value in private.items():
        torch.testing.assert_close(value, plain[key], rtol=1e-4, atol=1e-5)
    sgd = _private_without_noise("sgd", 0.05)
    assert any(not torch.allclose(v, sgd[k]) for k, v in private.items())


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
def test_dp_noise_is_secret_the_same_public_seed_gives_different_updates(mode: str) -> None:
    """The run's seed is public (the coordinator sends it): two DP trainings with the same
    seed and data must not repeat their noise or batches, or the server could subtract it."""
    dp = DPParams(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode)
    a, b = _train(dp, seed=1), _train(dp, seed=1)
    assert all(not torch.equal(a[k], b[k]) for k in a)
    plain_a, plain_b = _train(None, seed=1), _train(None, seed=1)  # the seed still rules plain
    assert all(torch.equal(plain_a[k], plain_b[k]) for k in plain_a)


def test_reproducible_noise_repeats_with_the_same_noise_seed_only() -> None:
    dp = DPParams(noise_multiplier=1.0, max_grad_norm=1.0)
    a, b = _train(dp, noise_seed=7), _train(dp, noise_seed=7)
    c = _train(dp, noise_seed=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_training_reports_the_steps_the_accountant_counted() -> None:
    model = _model()
    result = train_local(
        TASK,
        model,
        _data(),
        LocalTraining(3, 32, 0.3, 0),
        DPParams(noise_multiplier=1.0, max_grad_norm=1.0),
    )
    assert result.steps == 3 * 4
    assert [(e.sample_rate, e.steps) for e in result.events] == [(0.25, 12)]


def test_clipping_bounds_every_per_sample_gradient() -> None:
    from opacus import GradSampleModule

    model = GradSampleModule(_model())
    data = _data(16)
    TASK.loss(model(data.x), data.y).backward()
    norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in model.parameters()])
    per_sample = norms.norm(dim=0)  # (B,)
    clip = 0.01
    factor = (clip / (per_sample + 1e-6)).clamp(max=1.0)
    assert (per_sample > clip).any()
    assert torch.all(per_sample * factor <= clip + 1e-6)


@pytest.mark.parametrize("n", [1000, 50_000])
def test_poisson_sampling_includes_each_row_independently_at_the_rate(n: int) -> None:
    rate, draws = 0.02, 400
    gen = np.random.default_rng(0)
    counts = torch.zeros(n)
    sizes = []
    for _ in range(draws):
        rows = poisson_rows(n, rate, gen)
        assert torch.all(rows[1:] > rows[:-1]) and (len(rows) == 0 or 0 <= rows[0] <= rows[-1] < n)
        counts[rows] += 1
        sizes.append(len(rows))
    mean, std = n * rate, (n * rate * (1 - rate)) ** 0.5
    assert abs(sum(sizes) / draws - mean) < 4 * std / draws**0.5  # batch size ~ Binomial(n, q)
    assert abs(float(torch.tensor(sizes, dtype=torch.float).std()) - std) < 0.15 * std
    # Every region of the data is drawn at the rate: no row is favoured by position.
    for part in counts.chunk(10):
        assert abs(float(part.mean()) / draws - rate) < 0.1 * rate
