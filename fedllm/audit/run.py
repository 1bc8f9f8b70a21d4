"""``fedllm audit``: one real federated run with canaries planted at one site, then the attacks.

The run is the product's own (the ServerApp and ClientApp on Flower's simulation engine, the
sites' DP-SGD with their own noise); the audit only adds the `audit-canaries` run-config key,
whose file the audited site plants (:mod:`fedllm.audit.canaries`). The auditor draws ``m``
gradient canaries and ``m`` input canaries, includes each with probability 1/2 from fresh OS
entropy, and keeps the masks to itself; the attackers (:mod:`fedllm.audit.attacks`) see the
candidates, the run config and what the server saw, never the masks. Each attacker's scores
become an epsilon lower bound (:mod:`fedllm.audit.guesses`): Steinke et al.'s analysis always,
and the f-DP analysis too against a family of trade-off curves built from the audited site's
ledger (mu-GDP where every release is Gaussian without subsampling, else its own schedule with
scaled noise); the stronger is the headline, reported beside the epsilon the
accountant reports for that site. A bound above the reported epsilon (secret noise) means the
code does not implement its guarantee: the audit says so and fails.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedllm.audit.attacks import (
    BLACK_BOX,
    GRADIENT_SCORERS,
    SEED_KNOWING,
    Observation,
    black_box_scores,
    check_attackers,
    site_rounds,
)
from fedllm.audit.canaries import GradientCanaries, InputCanaries, PlantedCanaries
from fedllm.audit.families import Family, family_for, mu_of
from fedllm.audit.fdp import gdp_epsilon
from fedllm.audit.guesses import ANALYSES, AuditOutcome, audit
from fedllm.audit.observed import load_observed
from fedllm.config import RunConfig
from fedllm.errors import ConfigError
from fedllm.privacy.accountants import get_accountant
from fedllm.privacy.events import DPEvent
from fedllm.privacy.ledger import PrivacyLedger
from fedllm.rundir import default_run_name
from fedllm.tasks import get_task, load_federation
from fedllm.weights import exchanged_state

RUN = "run"  # the audited run's folder inside the audit folder
OBSERVES = {
    BLACK_BOX: "the final global model only (input canaries scored by their loss)",
    "coordinator": (
        "what the server receives: with secure aggregation off, the audited site's update in "
        "every round; with it on, the aggregate of the sites' updates (Dirac gradient canaries)"
    ),
    SEED_KNOWING: (
        "the coordinator's view plus the run config: regenerates every site's DP noise from "
        "the public seed and removes it (Dirac gradient canaries)"
    ),
}


@dataclass(frozen=True)
class AuditPlan:
    """The audit's own options (the run's come from the run config)."""

    canaries: int = 1000
    attackers: tuple[str, ...] = (BLACK_BOX, "coordinator", SEED_KNOWING)
    site_index: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        check_attackers(list(self.attackers))
        if self.canaries < 2:
            raise ConfigError(f"`--canaries` must be >= 2, got {self.canaries}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"`--confidence` must be in (0, 1), got {self.confidence}")


@dataclass
class AuditRun:
    """A prepared audit: the run config (with `audit-canaries`), the folder, the secrets."""

    cfg: RunConfig
    folder: Path
    plan: AuditPlan
    gradient: GradientCanaries | None
    inputs: InputCanaries | None
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # the auditor's secret

    @property
    def run_dir(self) -> Path:
        return self.folder / RUN


def prepare_audit(overrides: dict[str, Any], plan: AuditPlan) -> AuditRun:
    """Validate the run config, draw the canaries and their secret inclusion, write the file
    the audited site plants: all before any training."""
    from fedllm import simulation

    fused = {**simulation.default_config(), **overrides}
    if fused.get("ledger-dir"):
        raise ConfigError("an audit needs fresh site ledgers: leave `ledger-dir` empty")
    if fused.get("audit-canaries"):
        raise ConfigError("`audit-canaries` is set by `fedllm audit` itself; do not pass it")
    name = str(fused.get("run-name") or default_run_name(f"audit-{fused.get('task', 'run')}"))
    folder = Path(str(fused.get("out-dir", "runs"))) / name
    if folder.exists():
        raise ConfigError(f"audit folder {folder} already exists; choose another `run-name`")
    planted = (folder / "site-canaries.json").resolve()
    overrides = {
        **overrides,
        "out-dir": str(folder),
        "run-name": RUN,
        "audit-canaries": str(planted),
    }
    cfg = simulation.prepare(overrides)
    if not 0 <= plan.site_index < cfg.num_sites:
        raise ConfigError(f"`--site` must be in 0..{cfg.num_sites - 1}, got {plan.site_index}")
    task = get_task(cfg.task)
    federation = load_federation(cfg)
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    gradient = inputs = None
    masks: dict[str, np.ndarray] = {}
    if any(a in GRADIENT_SCORERS for a in plan.attackers):
        model = task.build_model(cfg, federation.input_shape)
        gradient = GradientCanaries.draw(model, plan.canaries, rng)
        masks["gradient"] = rng.random(plan.canaries) < 0.5
    if BLACK_BOX in plan.attackers:
        inputs = InputCanaries.draw(federation.input_shape, task.num_classes, plan.canaries, rng)
        masks["input"] = rng.random(plan.canaries) < 0.5
    folder.mkdir(parents=True)
    PlantedCanaries(
        plan.site_index,
        gradient.subset(masks["gradient"]) if gradient is not None else None,
        inputs.subset(masks["input"]) if inputs is not None else None,
    ).save(planted)
    return AuditRun(cfg, folder, plan, gradient, inputs, masks)


def observe(prepared: AuditRun) -> Observation:
    """What the attackers get from the finished run."""
    cfg = prepared.cfg
    task = get_task(cfg.task)
    federation = load_federation(cfg)
    model = task.build_model(cfg, federation.input_shape)  # the initial global model
    initial = {k: v.detach().numpy().astype(np.float64) for k, v in exchanged_state(model).items()}
    final_path = prepared.run_dir / "model.pt"
    if not final_path.is_file():
        raise ConfigError(f"the audited run ended without {final_path}")
    model.load_state_dict(torch.load(final_path, weights_only=True))
    final = {k: v.detach().numpy().astype(np.float64) for k, v in exchanged_state(model).items()}
    names = [site.name for site in federation.sites]
    rounds = site_rounds(prepared.run_dir / "sites", names)
    index = prepared.plan.site_index
    own = load_observed(prepared.run_dir, names[index])
    return Observation(cfg, task, model, initial, final, tuple(rounds), index, own)


def reported_epsilon(run_dir: Path, site: str) -> float | None:
    """The audited site's cumulative epsilon as the run reports it (None without DP)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not metrics["config"].get("dp", True):
        return None
    value = metrics.get("final", {}).get("epsilon-per-site", {}).get(site)
    if value is not None:
        return float(value)
    raise ConfigError(f"metrics.json reports no epsilon for the audited site {site}")


def site_releases(run_dir: Path, site: str) -> list[DPEvent]:
    """Every release the audited site's ledger records (none without DP: no ledger)."""
    path = run_dir / "sites" / site / "ledger.jsonl"
    if not path.is_file():
        return []
    return [entry.event for entry in PrivacyLedger(path).entries()]


def attack(
    prepared: AuditRun, obs: Observation, family: Family | None = None
) -> dict[str, AuditOutcome]:
    """Every attacker's scores turned into a bound against the secret masks. ``family``: the
    trade-off curves holding the audited site's mechanism (the f-DP analysis runs with it)."""
    plan, cfg = prepared.plan, prepared.cfg
    outcomes = {}
    for name in plan.attackers:
        if name == BLACK_BOX and prepared.inputs is not None:
            scores = black_box_scores(obs.task, obs.model, prepared.inputs)
            mask = prepared.masks["input"]
        elif name in GRADIENT_SCORERS and prepared.gradient is not None:
            scores = GRADIENT_SCORERS[name](obs, prepared.gradient)
            mask = prepared.masks["gradient"]
        else:
            raise ConfigError(f"attacker {name!r} has no canaries drawn for it in this audit")
        outcomes[name] = audit(scores, mask, cfg.target_delta, plan.confidence, family=family)
    return outcomes


def analysis_row(outcome: AuditOutcome) -> dict[str, Any]:
    """Each analysis's bound, its family and level, and every guess count it tried."""
    return {
        a.name: {
            "paper": a.kind.paper,
            "family": a.family,
            "level": a.level,
            "epsilon-lower-bound": a.epsilon,
            "guesses": a.best.guesses,
            "correct": a.best.correct,
            "guesses-per-side": a.best.per_side,
            "ceiling": a.ceiling,
            "tried": [
                {"per-side": t.per_side, "guesses": t.guesses, "correct": t.correct,
                 "epsilon": t.epsilon}
                for t in a.tried
            ],
        }
        for a in outcome.analyses
    }  # fmt: skip


def report(
    prepared: AuditRun,
    outcomes: dict[str, AuditOutcome],
    site_updates: bool = False,
    releases: list[DPEvent] | None = None,
) -> dict[str, Any]:
    """audit.json's content. ``site_updates``: the server kept the audited site's own plain
    updates, so the gradient attackers scored those rather than the aggregate. ``releases``:
    the audited site's ledger (the f-DP analysis's family, and its exact mu if it has one).
    ``violations`` lists the attackers whose headline bound exceeds the reported epsilon where
    the guarantee claims to hold (DP with secret noise)."""
    cfg, plan = prepared.cfg, prepared.plan
    site = load_federation(cfg).sites[plan.site_index].name
    reported = reported_epsilon(prepared.run_dir, site)
    releases = releases or []
    family = family_for(releases, cfg.target_delta, cfg.accountant)
    attackers: dict[str, Any] = {}
    violations = []
    for name, outcome in outcomes.items():
        exceeds = reported is not None and outcome.epsilon > reported
        expected = name == SEED_KNOWING and cfg.reproducible_noise
        if exceeds and not expected:
            violations.append(name)
        head = outcome.headline
        attackers[name] = {
            "observes": OBSERVES[name],
            "secure-aggregation": cfg.secagg,
            "scored": (
                "final global model"
                if name == BLACK_BOX
                else "the audited site's updates"
                if site_updates
                else "the aggregate updates"
            ),
            "canaries": outcome.canaries,
            "included": outcome.included,
            "epsilon-lower-bound": outcome.epsilon,
            "analysis": head.name,
            "guesses": head.best.guesses,
            "correct": head.best.correct,
            "guesses-per-side": head.best.per_side,
            "ceiling": max(a.ceiling for a in outcome.analyses),
            "exceeds-reported": exceeds,
            "analyses": analysis_row(outcome),
        }
    strongest = max(outcomes, key=lambda n: outcomes[n].epsilon)
    mu = mu_of(releases)
    return {
        "site": site,
        "site-index": plan.site_index,
        "reported-epsilon": reported,
        "delta": cfg.target_delta,
        "confidence": plan.confidence,
        "method": (
            "one-run auditing: Steinke, Nasr, Jagielski 2023 ((epsilon, delta)-DP)"
            + (" and Mahloujifar, Melis, Chaudhuri 2024 (f-DP)" if family else "")
            + "; 1 - confidence split in advance between the analyses and their guess counts "
            "(Bonferroni); the headline is the strongest"
        ),
        "f-dp": {
            "applies": family is not None,
            "family": None if family is None else family.name,
            "why": (
                family.about
                if family is not None
                else "the audited site made no private release (no DP): no trade-off curve to "
                "hypothesise, so only Steinke et al.'s analysis runs"
            ),
            "schedule-mu": mu,
            "schedule-gdp-epsilon": None if mu is None else gdp_epsilon(mu, cfg.target_delta),
            "ledger-epsilon": (  # the family's member at scale 1, by the run's accountant
                None
                if family is None
                else get_accountant(cfg.accountant).epsilon(releases, cfg.target_delta)
            ),
        },
        "dp": cfg.dp,
        "reproducible-noise": cfg.reproducible_noise,
        "attackers": attackers,
        "strongest": {
            "attacker": strongest,
            "epsilon-lower-bound": outcomes[strongest].epsilon,
            "analysis": outcomes[strongest].headline.name,
        },
        "violations": violations,
        "run": str(prepared.run_dir),
        "config": cfg.to_flower(),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Each attacker's bound under each analysis as bars (the headline labelled), the
    reported epsilon as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["attackers"])
    kinds = [k for k in ANALYSES if any(k in result["attackers"][n]["analyses"] for n in names)]
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for j, kind in enumerate(kinds):
        xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(names))]
        rows = [result["attackers"][n]["analyses"].get(kind, {}) for n in names]
        ys = [row.get("epsilon-lower-bound", 0.0) for row in rows]
        ax.bar(xs, ys, width, label=f"{kind} analysis")
    for i, n in enumerate(names):
        row = result["attackers"][n]
        label = f"{row['epsilon-lower-bound']:.2f}\n{row['analysis']}"
        top = row["epsilon-lower-bound"]
        ax.annotate(label, (i, top), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    if result["reported-epsilon"] is not None:
        ax.axhline(
            result["reported-epsilon"],
            color="tab:red",
            linestyle="--",
            label=f"reported epsilon {result['reported-epsilon']:.3g}",
        )
    ax.set_ylabel("epsilon lower bound")
    best = result["strongest"]
    ax.set_title(
        f"privacy audit of {result['site']}: at least {best['epsilon-lower-bound']:.2f} "
        f"({best['attacker']}, {best['analysis']}; {result['confidence']:.0%} over every "
        "analysis)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def finish(prepared: AuditRun) -> dict[str, Any]:
    """Attack the finished run and write audit.json and audit.png into the audit folder."""
    obs = observe(prepared)
    site = load_federation(prepared.cfg).sites[prepared.plan.site_index].name
    releases = site_releases(prepared.run_dir, site)
    family = family_for(releases, prepared.cfg.target_delta, prepared.cfg.accountant)
    outcomes = attack(prepared, obs, family)
    result = report(prepared, outcomes, site_updates=obs.own is not None, releases=releases)
    (prepared.folder / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, prepared.folder / "audit.png")
    return result
