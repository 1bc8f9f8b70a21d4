"""The attackers of an audit: each scores every candidate canary (higher: more likely included).

- ``black-box``: sees only the final global model; scores an input canary by minus the
  model's loss on it (a training row with a random label is fitted, so its loss drops).
- ``coordinator``: what the server receives. With secure aggregation off, the audited site's
  plain update every round (summed by :mod:`fedllm.audit.observed`); with it on, only the
  aggregate: under FedAvg the global model moves by the weighted mean of the sites' updates,
  so the sum of the rounds' aggregates is the final model minus the initial one. A Dirac
  canary ``s C e_j`` taken by SGD moves coordinate ``j`` by ``-lr s C / B`` each time it is
  sampled, so the score is ``-s u_j`` for the summed update ``u`` (Nasr et al. 2023's
  white-box score: the sum over steps of the update's inner product with the canary).
- ``seed-knowing``: the coordinator plus the run config. It regenerates each site's DP noise as
  the site would have drawn it from the public seed (``NoiseSource.reproducible`` with
  :func:`~fedllm.privacy.randomness.public_training_seed`, the draws in the order fedllm's
  book-keeping DP-SGD takes them) and removes it before scoring. Under ``reproducible-noise``
  this is the site's noise and the canaries stand out; with secret noise (the default) it is an
  unrelated Gaussian vector and removing it only adds noise.

Each reads the released example count, noise multiplier, sampling rate and steps of every
site's rounds (what each reply carried, as the simulated sites' ledgers record them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedllm.audit.canaries import GradientCanaries, InputCanaries
from fedllm.config import RunConfig
from fedllm.errors import ConfigError
from fedllm.privacy.chain import COUNT, TRAIN
from fedllm.privacy.ledger import PrivacyLedger
from fedllm.privacy.randomness import NoiseSource, public_training_seed
from fedllm.tasks import Task

BLACK_BOX, COORDINATOR, SEED_KNOWING = "black-box", "coordinator", "seed-knowing"
ATTACKERS = (BLACK_BOX, COORDINATOR, SEED_KNOWING)
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class SiteRound:
    """One site's training in one round, as its reply released it."""

    site_index: int
    server_round: int
    count: int  # the released (noised) example count: the FedAvg weight
    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class Observation:
    """What the attackers see of a finished run."""

    cfg: RunConfig
    task: Task
    model: torch.nn.Module  # the architecture, holding the final global weights
    initial: Arrays
    final: Arrays
    rounds: tuple[SiteRound, ...]
    site_index: int = 0  # the audited site
    own: Arrays | None = None  # its summed plain updates as the server received them, if any

    @property
    def aggregate(self) -> Arrays:
        """The sum of every round's aggregate update: final minus initial global model."""
        return {name: self.final[name] - self.initial[name] for name in self.final}


def site_rounds(sites_dir: Path, names: list[str], run_id: str | None = None) -> list[SiteRound]:
    """Every training of the sites ``names`` (index = position), from their ledgers."""
    rounds = []
    for index, name in enumerate(names):
        path = sites_dir / name / "ledger.jsonl"
        if not path.is_file():
            continue  # a site that never trained (or kept no ledger: without DP)
        entries = PrivacyLedger(path).entries()
        if run_id is not None:
            entries = [e for e in entries if e.run_id == run_id]
        counts = [int(e.value) for e in entries if e.kind == COUNT and e.value is not None]
        for e in entries:
            if e.kind == TRAIN:
                count = counts[-1] if counts else 0
                rounds.append(
                    SiteRound(index, e.round, count, e.noise_multiplier, e.sample_rate, e.steps)
                )
    return rounds


def coordinator_scores(obs: Observation, canaries: GradientCanaries) -> np.ndarray:
    """``-s_i u_{j_i}`` for every canary: (m,), with ``u`` the audited site's summed updates
    where the server received them in the clear, else the summed aggregate."""
    observed = obs.own if obs.own is not None else obs.aggregate
    return np.asarray(-canaries.signs * canaries.values(observed))


def seed_knowing_scores(obs: Observation, canaries: GradientCanaries) -> np.ndarray:
    """The coordinator's scores after removing the noise regenerated from the public seed."""
    own = obs.own is not None
    observed = obs.own if obs.own is not None else obs.aggregate
    noise = regenerated_noise(obs, only_audited=own)
    clean = {name: value - noise[name] for name, value in observed.items()}
    return np.asarray(-canaries.signs * canaries.values(clean))


def regenerated_noise(obs: Observation, only_audited: bool = False) -> Arrays:
    """The DP noise's part of the summed aggregate, if every site drew it from the public seed:
    per site and round ``-lr * w * sum_t z_t``, with ``z_t ~ N(0, (sigma C / B)^2)`` drawn
    parameter by parameter as :class:`~fedllm.privacy.bookkeeping.BookkeepingDPSGD` draws it
    and ``w`` the site's FedAvg weight in that round (its released count over the round's).
    ``only_audited``: the noise of the audited site's own updates (weight 1)."""
    cfg = obs.cfg
    if cfg.optimizer != "sgd" or cfg.strategy != "fedavg":
        raise ConfigError(
            "the seed-knowing attacker replays plain SGD under FedAvg (the update is then "
            f"linear in the noise); this run has optimizer {cfg.optimizer!r}, "
            f"strategy {cfg.strategy!r}"
        )
    params = [(n, p) for n, p in obs.model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params}
    per_round: dict[int, int] = {}
    for r in obs.rounds:
        per_round[r.server_round] = per_round.get(r.server_round, 0) + r.count
    for r in obs.rounds:
        if r.noise_multiplier <= 0 or not r.count:
            continue
        if only_audited and r.site_index != obs.site_index:
            continue
        batch = max(1, int(r.count * r.sample_rate))  # the expected batch size the site divides by
        std = r.noise_multiplier * cfg.max_grad_norm / batch
        source = NoiseSource.reproducible(
            public_training_seed(cfg.seed, r.server_round, r.site_index)
        )
        summed = {n: torch.zeros_like(p) for n, p in params}
        for _ in range(r.steps):
            for n, p in params:
                summed[n] += torch.normal(torch.zeros_like(p), std, generator=source.noise)
        weight = 1.0 if only_audited else r.count / per_round[r.server_round]
        for n, _ in params:
            total[n] -= cfg.learning_rate * weight * summed[n].double()
    return {n: t.numpy() for n, t in total.items()}


def black_box_scores(task: Task, model: torch.nn.Module, canaries: InputCanaries) -> np.ndarray:
    """Minus the final global model's loss on each input canary: (m,)."""
    model.eval()
    with torch.no_grad():
        logits = model(canaries.x)
        losses = task.loss(logits, canaries.y, reduction="none")
    return -losses.reshape(len(canaries), -1).mean(dim=1).double().numpy()


Scorer = Callable[[Observation, GradientCanaries], np.ndarray]
GRADIENT_SCORERS: dict[str, Scorer] = {
    COORDINATOR: coordinator_scores,
    SEED_KNOWING: seed_knowing_scores,
}


def check_attackers(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in ATTACKERS]
    if unknown or not names:
        raise ConfigError(
            f"`--attackers` must name some of {', '.join(ATTACKERS)}, got {', '.join(names)!r}"
        )
    return names
