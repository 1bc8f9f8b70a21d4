"""The tuning protocol of the utility benchmark, the same for fedllm and for the peer.

- **Validation rows** come out of each site's training rows, and only out of rows that are
  training rows under EVERY reported seed: the split (partition and held-out rows) moves with
  the seed, so a row held out by any reported run is never scored while tuning
  (:func:`validation_federation`). Preprocessing (per-site scaling) is refitted on the rows
  that remain for training, so the validation rows do not shape it either.
- **Tuning seeds** are distinct from the reported seeds.
- **One grid per data set and privacy regime**, run for both sides; the choice is the best mean
  validation accuracy over the tuning seeds, ties to the earlier grid entry (:func:`choose`).
- **In-process rounds for both sides** (:func:`run_inprocess`): the same FedAvg over the same
  sites, with each side's own local training: fedllm's ``train_local`` (as its ClientApp calls
  it) or the peer's ``train_round`` (as its ClientApp calls it), each with its own noise
  calibration. Reported numbers come from the real apps, never from here.

Imported as ``tuning`` with ``benchmarks/`` on ``sys.path`` (as ``peer`` is).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from fedllm.config import RunConfig
from fedllm.tasks import Federation, SiteData, Source, Split, Task, get_task
from fedllm.tasks.base import build_federation
from fedllm.training import evaluate

SIDES = ("fedllm", "peer")


@dataclass(frozen=True)
class Setting:
    """One point of a grid: the sites' local training (clip is ignored without DP)."""

    learning_rate: float
    batch_size: int
    max_grad_norm: float

    def overrides(self) -> dict[str, float | int]:
        return {
            "learning-rate": self.learning_rate,
            "batch-size": self.batch_size,
            "max-grad-norm": self.max_grad_norm,
        }

    def label(self) -> str:
        return f"lr {self.learning_rate:g}, batch {self.batch_size}, clip {self.max_grad_norm:g}"


def grid(
    learning_rates: tuple[float, ...], batch_sizes: tuple[int, ...], clips: tuple[float, ...]
) -> tuple[Setting, ...]:
    """The full factorial, learning rate outermost."""
    return tuple(Setting(lr, b, c) for lr in learning_rates for b in batch_sizes for c in clips)


@dataclass(frozen=True)
class SiteRows:
    """One site's row indices into the source: training rows and held-out rows (into
    ``source.test`` when the source has its own test set)."""

    name: str
    train: np.ndarray
    test: np.ndarray


class _RowIds(Task):
    """A task whose rows are their own indices, so :func:`build_federation` (the product's
    own partition and held-out split) tells which rows each site trains and tests on."""

    name = "row-ids"
    num_classes = 2

    def load_source(self, cfg: RunConfig, path: str) -> Source:
        raise NotImplementedError

    def build_model(self, cfg: RunConfig, input_shape: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError


def site_rows(cfg: RunConfig, source: Source) -> list[SiteRows]:
    """Each site's train and held-out row indices for ``cfg`` (its seed, partitioner, sites)."""
    ids = Source(
        np.arange(len(source.y), dtype=np.float64)[:, None],
        source.y,
        source.groups,
        source.group_names,
        None
        if source.test is None
        else (np.arange(len(source.test[1]), dtype=np.float64)[:, None], source.test[1]),
    )
    fed = build_federation(
        _RowIds(), replace(cfg, feature_scaling="site"), ids, cfg.num_sites, cfg.partitioner
    )
    return [
        SiteRows(s.name, s.train.x[:, 0].long().numpy(), s.test.x[:, 0].long().numpy())
        for s in fed.sites
    ]


def validation_rows(
    cfg: RunConfig, source: Source, reported_seeds: tuple[int, ...], fraction: float
) -> list[tuple[SiteRows, np.ndarray]]:
    """Under ``cfg`` (a tuning seed): each site's rows and its validation rows, about
    ``fraction`` of its training rows, drawn only from rows no reported seed holds out."""
    if cfg.seed in reported_seeds:
        raise ValueError(f"tuning seed {cfg.seed} is also a reported seed {reported_seeds}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    held_out: set[int] = set()
    if source.test is None:  # a source with its own test set never holds out training rows
        for seed in reported_seeds:
            for site in site_rows(replace(cfg, seed=seed), source):
                held_out.update(site.test.tolist())
    out = []
    for i, site in enumerate(site_rows(cfg, source)):
        pool = np.array([r for r in site.train if r not in held_out], dtype=np.int64)
        want = max(1, round(fraction * len(site.train)))
        rng = np.random.default_rng([cfg.seed, i, 11])
        chosen = rng.choice(pool, size=min(want, len(pool)), replace=False)
        out.append((site, np.sort(chosen)))
    return out


def validation_federation(
    cfg: RunConfig, reported_seeds: tuple[int, ...], fraction: float = 0.2
) -> Federation:
    """The federation tuning runs on: each site trains on its training rows minus its
    validation rows; the pooled validation rows are what a configuration is scored on."""
    task = get_task(cfg.task)
    source = task.load_source(cfg, cfg.data_path)
    preprocess = task.preprocess() if cfg.feature_scaling == "site" else None
    if cfg.feature_scaling != "site":
        raise ValueError("tuning supports `feature-scaling` 'site' only")
    sites = []
    for site, val in validation_rows(cfg, source, reported_seeds, fraction):
        fit = np.setdiff1d(site.train, val)
        fit_x, fit_y, val_x, val_y = source.x[fit], source.y[fit], source.x[val], source.y[val]
        if preprocess is not None:  # refitted without the validation rows
            transform = preprocess(fit_x, fit_y)
            fit_x, val_x = transform(fit_x), transform(val_x)
        sites.append(SiteData(site.name, _split(fit_x, fit_y), _split(val_x, val_y)))
    pooled = Split(torch.cat([s.test.x for s in sites]), torch.cat([s.test.y for s in sites]))
    if len(pooled) == 0:
        raise ValueError("no validation rows: every training row is held out by a reported seed")
    return Federation(tuple(sites), pooled, tuple(sites[0].train.x.shape[1:]), task.num_classes)


_FEDERATIONS: dict[tuple[Any, ...], Federation] = {}


def cached_validation_federation(
    cfg: RunConfig, reported_seeds: tuple[int, ...], fraction: float
) -> Federation:
    """:func:`validation_federation`, kept per process for the latest two data keys (the
    local-training settings a grid varies do not change the rows)."""
    key = (
        cfg.task,
        cfg.data_path,
        cfg.partitioner,
        cfg.num_sites,
        cfg.dirichlet_alpha,
        cfg.seed,
        cfg.test_fraction,
        cfg.feature_scaling,
        reported_seeds,
        fraction,
    )
    if key not in _FEDERATIONS:
        while len(_FEDERATIONS) >= 2:  # MNIST's are ~200 MB each
            del _FEDERATIONS[next(iter(_FEDERATIONS))]
        _FEDERATIONS[key] = validation_federation(cfg, reported_seeds, fraction)
    return _FEDERATIONS[key]


def carve(fed: Federation, fraction: float, seed: int) -> Federation:
    """For a federation whose held-out rows never move (one reported split, as the
    Shakespeare rows use): each site keeps ``1 - fraction`` of its training rows to train and
    scores on the rest, drawn with ``seed``; its held-out rows are not touched."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    sites = []
    for i, site in enumerate(fed.sites):
        order = torch.from_numpy(np.random.default_rng([seed, i, 13]).permutation(len(site.train)))
        k = max(1, round(fraction * len(site.train)))
        val, fit = order[:k], order[k:]
        sites.append(
            SiteData(
                site.name,
                Split(site.train.x[fit], site.train.y[fit]),
                Split(site.train.x[val], site.train.y[val]),
            )
        )
    pooled = Split(torch.cat([s.test.x for s in sites]), torch.cat([s.test.y for s in sites]))
    return Federation(tuple(sites), pooled, fed.input_shape, fed.num_classes)


def choose(grid_: tuple[Setting, ...], scores: dict[Setting, list[float]]) -> Setting:
    """The setting with the best mean validation accuracy; ties go to the earlier one."""
    missing = [s for s in grid_ if not scores.get(s)]
    if missing:
        raise ValueError(f"no validation score for {missing[0].label()}")
    best = max(range(len(grid_)), key=lambda i: (float(np.mean(scores[grid_[i]])), -i))
    return grid_[best]


def run_inprocess(
    side: str, cfg: RunConfig, fed: Federation, eval_batch: int = 1024
) -> dict[str, Any]:
    """FedAvg over ``fed``'s sites for ``cfg.num_server_rounds`` rounds with ``side``'s local
    training; the final model's scores on the pooled validation rows."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    started = time.monotonic()
    task = get_task(cfg.task)
    model = task.build_model(cfg, fed.input_shape)
    train = _fedllm_site if side == "fedllm" else _peer_site
    # fedllm's sites release their example count once per run, noised (clients/train.py); the
    # schedule, calibration and normalizer follow that count. The peer sends its count clear.
    counts = [_released_count(cfg, len(site.train)) for site in fed.sites]
    for rnd in range(1, cfg.num_server_rounds + 1):
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        total: dict[str, torch.Tensor] = {}
        weight = 0
        for i, site in enumerate(fed.sites):
            local = task.build_model(cfg, fed.input_shape)
            local.load_state_dict(global_state)
            train(task, cfg, local, site.train, cfg.seed * 1_000_003 + rnd * 1_009 + i, counts[i])
            n = len(site.train)
            weight += n
            for k, v in local.state_dict().items():
                total[k] = total.get(k, torch.zeros_like(v, dtype=torch.float64)) + v.double() * n
        model.load_state_dict({k: (v / weight).float() for k, v in total.items()})
    scores: dict[str, Any] = dict(evaluate(task, model, fed.central_test, eval_batch))
    scores["seconds"] = round(time.monotonic() - started, 2)
    return scores


def _released_count(cfg: RunConfig, n: int) -> int:
    """The example count a fedllm site releases for the run (noised under DP, fresh entropy)."""
    if not cfg.dp:
        return n
    from fedllm.privacy.randomness import release_generator
    from fedllm.privacy.releases import release_count

    return release_count(n, cfg.count_noise, release_generator(None))


def _fedllm_site(
    task: Task, cfg: RunConfig, model: nn.Module, data: Split, seed: int, count: int
) -> None:
    """What fedllm's ClientApp does with a round (clients/train.py), minus the ledger: the
    noise calibrated for the run's whole release plan at the released ``count``."""
    from clients.train import release_plan
    from fedllm.privacy import DPParams
    from fedllm.training import LocalTraining, train_local

    dp = None
    if cfg.dp:
        sigma = _fedllm_noise(
            cfg.target_epsilon, cfg.target_delta, release_plan(cfg, count), cfg.accountant
        )
        dp = DPParams(
            sigma, cfg.max_grad_norm, cfg.accountant, grad_sample_mode=cfg.grad_sample_mode
        )
    settings = LocalTraining(
        cfg.local_epochs,
        cfg.batch_size,
        cfg.learning_rate,
        seed=seed,
        optimizer=cfg.optimizer,
        schedule_examples=count if cfg.dp else None,
    )
    train_local(task, model, data, settings, dp)


def _peer_site(
    task: Task, cfg: RunConfig, model: nn.Module, data: Split, seed: int, count: int
) -> None:
    """What the peer's ClientApp does with a round (peer/client_app.py); ``count`` unused (its
    count goes out clear)."""
    from peer.training import PeerDP, train_round

    torch.seed()  # as the peer's ClientApp: Opacus draws from torch's global generator
    dp = None
    if cfg.dp:
        batches = math.ceil(len(data) / cfg.batch_size)
        steps = batches * cfg.local_epochs * cfg.num_server_rounds
        sigma = _peer_noise(
            cfg.target_epsilon, cfg.target_delta, 1.0 / batches, steps, cfg.accountant
        )
        dp = PeerDP(sigma, cfg.max_grad_norm, cfg.target_delta, cfg.accountant)
    train_round(task, model, data, cfg.batch_size, cfg.learning_rate, cfg.local_epochs, dp, False)


@functools.lru_cache(maxsize=256)
def _fedllm_noise(eps: float, delta: float, plan: Any, accountant: str) -> float:
    from fedllm.privacy import calibrate_plan

    return calibrate_plan(eps, delta, plan, accountant)


@functools.lru_cache(maxsize=256)
def _peer_noise(eps: float, delta: float, rate: float, steps: int, accountant: str) -> float:
    from peer.training import noise_for_schedule

    return noise_for_schedule(eps, delta, rate, steps, accountant)


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(
        torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32),
        torch.as_tensor(np.ascontiguousarray(y), dtype=torch.int64),
    )


def tune_job(job: dict[str, Any]) -> dict[str, Any]:
    """One tuning run, for a worker process: ``job`` holds the run-config overrides (the
    tuning seed among them), the side, the reported seeds and the validation fraction."""
    from fedllm.simulation import default_config

    torch.set_num_threads(1)  # one core per worker, as Ray gives each simulated site
    cfg = RunConfig.from_flower({**default_config(), **job["config"]})
    fed = cached_validation_federation(cfg, tuple(job["reported-seeds"]), float(job["fraction"]))
    return run_inprocess(str(job["side"]), cfg, fed)
