"""FedProx's local term (fedllm/training.py): nothing at mu = 0, the proximal loss's gradient
without DP, and under DP-SGD a data-independent term added after clipping and noise."""

from __future__ import annotations

import pytest
import torch

from fedllm.privacy import DPParams
from fedllm.tasks.base import Split
from fedllm.tasks.tabular import BreastCancer, TabularModel
from fedllm.training import LocalTraining, train_local

TASK = BreastCancer()
N, BATCH, LR = 128, 32, 0.3


def _data() -> Split:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=gen)
    y = (x[:, 0] + 0.3 * torch.randn(N, generator=gen) > 0).long()
    return Split(x, y)


def _model() -> TabularModel:
    torch.manual_seed(42)
    return TabularModel(6, 4)


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _train(mu: float, dp: DPParams | None, epochs: int = 2, batch: int = BATCH) -> TabularModel:
    model = _model()
    settings = LocalTraining(epochs, batch, LR, seed=1, proximal_mu=mu)
    train_local(TASK, model, _data(), settings, dp)
    return model


def _by_hand(mu: float, epochs: int, batch: int, clip: float | None, inside: bool = False):  # type: ignore[no-untyped-def]
    """SGD on the batches in order, written out. ``clip``: per-example clipping to that norm
    and the sum divided by the expected batch size (DP-SGD at zero noise); ``inside``: the
    proximal gradient joins each example's gradient before clipping (what fedllm must not do)."""
    model, data = _model(), _data()
    anchor = _params(model)
    params = list(model.parameters())
    for _ in range(epochs):
        for start in range(0, N, batch):
            rows = range(start, min(start + batch, N))
            if clip is None:  # the textbook FedProx objective, through autograd
                model.zero_grad()
                loss = TASK.loss(
                    model(data.x[start : start + batch]), data.y[start : start + batch]
                )
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                (loss + mu / 2 * prox).backward()
                grads = [p.grad.clone() for p in params]  # type: ignore[union-attr]
            else:
                grads = [torch.zeros_like(p) for p in params]
                for i in rows:
                    model.zero_grad()
                    TASK.loss(model(data.x[i : i + 1]), data.y[i : i + 1]).backward()
                    own = [p.grad.clone() for p in params]  # type: ignore[union-attr]
                    if inside:
                        own = [
                            g + mu * (p.detach() - a)
                            for g, p, a in zip(own, params, anchor, strict=True)
                        ]
                    norm = torch.stack([(g**2).sum() for g in own]).sum().sqrt()
                    factor = min(1.0, clip / float(norm))
                    grads = [s + factor * g for s, g in zip(grads, own, strict=True)]
                grads = [g / batch for g in grads]
                if not inside:
                    grads = [
                        g + mu * (p.detach() - a)
                        for g, p, a in zip(grads, params, anchor, strict=True)
                    ]
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.sub_(LR * g)
    return model


def _close(a: torch.nn.Module, b: torch.nn.Module, tol: float) -> bool:
    return all(
        torch.allclose(x, y, rtol=tol, atol=tol)
        for x, y in zip(a.parameters(), b.parameters(), strict=True)
    )


def test_at_mu_zero_local_training_is_fedavgs() -> None:
    """Full-batch steps, so plain training's shuffle does not matter."""
    assert _close(_train(0.0, None, epochs=5, batch=N), _by_hand(0.0, 5, N, None), 1e-6)


def test_without_dp_the_term_is_the_gradient_of_the_proximal_loss() -> None:
    trained = _train(0.7, None, epochs=5, batch=N)
    assert _close(trained, _by_hand(0.7, 5, N, None), 1e-5)
    assert not _close(trained, _by_hand(0.0, 5, N, None), 1e-3)


def test_a_larger_mu_keeps_the_local_model_nearer_the_global_one() -> None:
    anchor = _params(_model())

    def distance(mu: float) -> float:
        model = _train(mu, None, epochs=3)
        return float(
            sum(
                ((p.detach() - a) ** 2).sum()
                for p, a in zip(model.parameters(), anchor, strict=True)
            )
        )

    far, near, nearest = distance(0.0), distance(1.0), distance(3.0)
    assert far > near > nearest > 0


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
def test_under_dp_the_term_is_added_after_clipping_and_noise(mode: str) -> None:
    """Zero noise, in-order batches: DP FedProx equals per-example clipping of the loss's
    gradient alone, then mu (w - w_global) added to the clipped mean; not the term clipped
    with each example. It spends exactly what DP-SGD without it spends."""
    clip, mu = 0.05, 2.0
    dp = DPParams(0.0, clip, poisson_sampling=False, grad_sample_mode=mode)
    trained = _train(mu, dp)
    assert _close(trained, _by_hand(mu, 2, BATCH, clip), 1e-5)
    assert not _close(trained, _by_hand(mu, 2, BATCH, clip, inside=True), 1e-3)
    noisy = DPParams(1.0, clip, grad_sample_mode=mode)
    settings = LocalTraining(2, BATCH, LR, seed=1)
    with_term = train_local(
        TASK, _model(), _data(), LocalTraining(2, BATCH, LR, 1, proximal_mu=mu), noisy
    )
    without = train_local(TASK, _model(), _data(), settings, noisy)
    assert with_term.events == without.events
