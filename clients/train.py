"""One round of local training at a site, with its privacy accounting.

Under DP a site first releases its example count, once per run, with Gaussian noise (a ledger
entry of kind ``count``); its sampling rate, steps and normalizer come from that released count,
so nothing it sends depends on the exact count beyond that accounted release. The DP-SGD noise
multiplier is calibrated once per run for everything the site plans to release in it, in
ledger order (:class:`~fedllm.privacy.releases.ReleasePlan`: the count, `num-server-rounds` x
local steps at its sampling rate, the evaluations the run plans) and kept in ``context.state``.
What the site has spent comes from its ledger alone: the composed privacy loss of the verified
entries, kept per ledger head (:func:`fedllm.privacy.spent`), so the round's checks, its new
entries and its reported epsilon compose only this round's events.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from clients.evaluate import clear_scores, evaluation_event, evaluations_done, release_noised
from clients.site import SiteGuard, calibrated_once
from fedllm import protocol as proto
from fedllm import warm
from fedllm.audit.canaries import GradientCanaries, canary_norm, planted_at
from fedllm.config import RunConfig
from fedllm.errors import ConfigError, PrivacyBudgetExceededError
from fedllm.evaluation import SiteEvaluation
from fedllm.privacy import (
    DPEvent,
    DPParams,
    DPSchedule,
    LedgerState,
    PrivacyRequest,
    check_budget,
    spent,
)
from fedllm.privacy.accounting import calibrate_plan
from fedllm.privacy.chain import COUNT
from fedllm.privacy.randomness import public_training_seed, release_generator
from fedllm.privacy.releases import COUNT_SENSITIVITY, ReleasePlan, gaussian_event, release_count
from fedllm.scaling import scaler_from_config
from fedllm.tasks import SiteData, Task, get_task, load_federation
from fedllm.training import LocalTraining, train_local
from fedllm.weights import exchanged_state, load_arrays, state_bytes, to_arrays


@dataclass(frozen=True)
class SiteRuntime:
    """What a site works with: the run config, its task and its own data."""

    cfg: RunConfig
    task: Task
    data: SiteData
    site_index: int
    deployed: bool = False  # a real SuperNode (its own data file), not a virtual site
    canaries: GradientCanaries | None = None  # `fedllm audit`: gradient canaries it plants

    @classmethod
    def from_context(cls, context: Context) -> SiteRuntime:
        """Simulation: the site's partition of the federation; deployment: the SuperNode's
        own `data-path` from its node-config."""
        cfg = RunConfig.from_flower(context.run_config)
        task = get_task(cfg.task)
        node = context.node_config
        if proto.NODE_DATA_PATH in node:  # read once per run while the file is unchanged
            planted_at(cfg.audit_canaries, 0, deployed=True)  # refused when set
            site = warm.site_data(
                task, cfg, str(node[proto.NODE_DATA_PATH]), node_site_name(context)
            )
            return cls(cfg, task, site, 0, deployed=True)
        index = int(node[proto.NODE_PARTITION_ID])  # type: ignore[arg-type]
        nodes = int(node.get(proto.NODE_NUM_PARTITIONS, cfg.num_sites))  # type: ignore[arg-type]
        if nodes != cfg.num_sites:
            raise ConfigError(
                f"the simulation runs {nodes} SuperNodes but `num-sites` is {cfg.num_sites}: "
                f"`flwr federation simulation-config --num-supernodes {cfg.num_sites}`, "
                f"or run with num-sites={nodes}"
            )
        data = load_federation(cfg).sites[index]
        planted = planted_at(cfg.audit_canaries, index, deployed=False)
        if planted is None:
            return cls(cfg, task, data, index)
        return cls(cfg, task, planted.extend(data), index, canaries=planted.gradient)

    def scaled(self, config: ConfigRecord) -> SiteRuntime:
        """With federated scaling, the site's rows scaled by the pooled scaler in ``config``."""
        if self.cfg.feature_scaling != "federated":
            return self
        scaler = scaler_from_config(config, int(self.data.train.x.shape[1]))
        return replace(self, data=warm.scaled(self.data, scaler))

    def model(self, arrays: ArrayRecord) -> torch.nn.Module:
        model = self.task.build_model(self.cfg, tuple(self.data.train.x.shape[1:]))
        load_arrays(model, arrays)
        return model


def node_site_name(context: Context) -> str:
    """A deployed site's `site-name` from its node-config, else its node id."""
    return str(context.node_config.get(proto.NODE_SITE_NAME, f"node-{context.node_id}"))


def privacy_request(cfg: RunConfig) -> PrivacyRequest:
    return PrivacyRequest(
        cfg.dp,
        cfg.target_epsilon,
        cfg.target_delta,
        cfg.max_grad_norm,
        cfg.accountant,
        reproducible_noise=cfg.reproducible_noise,
        evaluations=SiteEvaluation.for_run(cfg).count if cfg.dp else 0,
        feature_statistics=cfg.feature_scaling == "federated",
        federation_size=cfg.num_sites,
    )


def release_plan(cfg: RunConfig, released_count: int) -> ReleasePlan:
    """What this site will release in the run, in ledger order, for its released count."""
    schedule = DPSchedule.for_site(
        released_count, cfg.batch_size, cfg.local_epochs, cfg.num_server_rounds
    )
    evaluation = SiteEvaluation.for_run(cfg)
    return ReleasePlan(
        schedule,
        cfg.count_noise,
        cfg.evaluation_noise,
        evaluation.before_training,
        evaluation.after_training,
    )


def record_level_noise_multiplier(cfg: RunConfig, plan: ReleasePlan, state: RecordDict) -> float:
    """The DP-SGD noise multiplier for everything the site plans to release in the run at the
    run's target-epsilon, calibrated once per run and cached in the site's state."""
    key = f"{cfg.target_epsilon!r}|{cfg.target_delta!r}|{plan!r}|{cfg.accountant}"
    return calibrated_once(
        state,
        proto.STATE_CALIBRATION,
        key,
        lambda: calibrate_plan(cfg.target_epsilon, cfg.target_delta, plan, cfg.accountant),
    )


def release_seed(cfg: RunConfig, server_round: int, site_index: int, kind: int) -> int | None:
    """None (fresh OS entropy) unless the site's policy allowed reproducible-noise."""
    if not cfg.reproducible_noise:
        return None
    return ((cfg.seed * 1_000_003 + server_round * 1_009 + site_index) * 31 + kind) & (2**62 - 1)


def _noised_evaluation(
    site: SiteRuntime,
    model: torch.nn.Module,
    guard: SiteGuard,
    ledger: LedgerState,
    run_id: str,
    server_round: int,
    kind: int,
) -> MetricRecord:
    """The site's noised scores of ``model`` (recorded in the ledger before they leave)."""
    cfg = site.cfg
    return release_noised(
        site.task,
        model,
        site.data,
        guard,
        ledger,
        run_id=run_id,
        server_round=server_round,
        noise_multiplier=cfg.evaluation_noise,
        delta=cfg.target_delta,
        accountant=cfg.accountant,
        seed=release_seed(cfg, server_round, site.site_index, kind=kind),
    )


def released_count(
    site: SiteRuntime, guard: SiteGuard, ledger: LedgerState, run_id: str, server_round: int
) -> int:
    """This run's released example count: from the ledger when the site already released it
    in this run (once per run, so repeated asks learn nothing new), else released now (noised,
    checked against the budgets and recorded before anything derived from it leaves)."""
    for entry in ledger.entries:
        if entry.run_id == run_id and entry.kind == COUNT and entry.value is not None:
            return int(entry.value)
    cfg = site.cfg
    event = gaussian_event(cfg.count_noise)
    _check_run_target(ledger, run_id, [event], cfg)
    check_budget(ledger, event, cfg.target_delta, cfg.accountant, guard.policy.max_epsilon)
    seed = release_seed(cfg, server_round, site.site_index, kind=1)
    count = release_count(len(site.data.train), cfg.count_noise, release_generator(seed))
    guard.ledger.append(
        ledger,
        site=site.data.name,
        run_id=run_id,
        server_round=server_round,
        event=event,
        clip_norm=COUNT_SENSITIVITY,
        delta=cfg.target_delta,
        accountant=cfg.accountant,
        kind=COUNT,
        value=float(count),
    )
    return count


@dataclass(frozen=True)
class RoundResult:
    """A round's local model, its metrics, and (when the train message asked for it) the
    site's evaluation of the model it was sent, before training it."""

    update: ArrayRecord
    metrics: MetricRecord
    evaluation: MetricRecord | None = None


def train_round(
    site: SiteRuntime,
    guard: SiteGuard,
    arrays: ArrayRecord,
    server_round: int,
    run_id: str,
    state: RecordDict,
    evaluate_first: bool = False,
) -> RoundResult:
    """Check the request against the site's policy and ledger, (with ``evaluate_first``)
    evaluate the model it was sent, train, record every release in the ledger (durably, before
    returning), and report the cumulative epsilon.

    Raises PolicyError, PrivacyBudgetExceededError or LedgerError (a refusal) before anything
    is released when the round is outside the policy, past the budget, or the ledger does not
    verify.
    """
    cfg = site.cfg
    guard.policy.check(privacy_request(cfg))
    model = site.model(arrays)
    with guard.ledger.locked() as ledger:
        if cfg.dp:
            if evaluate_first:  # refused before anything is released
                guard.policy.check_evaluation(evaluations_done(ledger, run_id))
            count = released_count(site, guard, ledger, run_id, server_round)
            plan = release_plan(cfg, count)
            sigma = record_level_noise_multiplier(cfg, plan, state)
            guard.policy.check_noise(sigma)
            dp: DPParams | None = DPParams(
                sigma, cfg.max_grad_norm, cfg.accountant, grad_sample_mode=cfg.grad_sample_mode
            )
            planned = [plan.schedule.round_event(sigma)]
            if evaluate_first:
                planned.insert(0, evaluation_event(cfg.evaluation_noise))
            _check_run_target(ledger, run_id, planned, cfg)
            check_budget(
                ledger, planned, cfg.target_delta, cfg.accountant, guard.policy.max_epsilon
            )
            metrics = MetricRecord({proto.NUM_EXAMPLES: count, proto.NOISE_MULTIPLIER: sigma})
        else:  # a baseline the site's policy allows (checked above): nothing is private
            count, dp = len(site.data.train), None
            plan = release_plan(cfg, count)
            metrics = MetricRecord({proto.NUM_EXAMPLES: count})
        evaluation = None
        if evaluate_first:
            evaluation = (
                _noised_evaluation(site, model, guard, ledger, run_id, server_round, kind=2)
                if cfg.dp
                else clear_scores(site.task, model, site.data)
            )
        public_seed = public_training_seed(cfg.seed, server_round, site.site_index)
        settings = LocalTraining(
            cfg.local_epochs,
            cfg.batch_size,
            cfg.learning_rate,
            seed=public_seed,
            optimizer=cfg.optimizer,
            # DP noise and batches: fresh OS entropy, unless the site's policy allowed
            # reproducible-noise (checked above), which derives them from the public seed.
            noise_seed=public_seed if cfg.reproducible_noise else None,
            proximal_mu=cfg.proximal_mu,  # FedProx (0 otherwise): outside DP, costs no epsilon
            schedule_examples=count if cfg.dp else None,
            canaries=site.canaries,
            canary_clip=canary_norm(cfg.max_grad_norm, cfg.dp),
        )
        result = train_local(site.task, model, site.data.train, settings, dp)
        events = result.events or [DPEvent(0.0, plan.schedule.sample_rate, result.steps)]
        for event in events:
            entry = guard.ledger.append(
                ledger,
                site=site.data.name,
                run_id=run_id,
                server_round=server_round,
                event=event,
                clip_norm=cfg.max_grad_norm if cfg.dp else 0.0,  # 0: no clipping, no DP
                delta=cfg.target_delta,
                accountant=cfg.accountant,
            )
    if cfg.dp:
        site_epsilon = math.inf if entry.epsilon is None else entry.epsilon
        if site_epsilon > guard.policy.max_epsilon:  # recorded, but the update is withheld
            raise PrivacyBudgetExceededError(
                f"the round took epsilon to {site_epsilon:.4f}, above the site's max-epsilon "
                f"{guard.policy.max_epsilon}; the spend is recorded and the update withheld"
            )
        run = spent(ledger.entries, cfg.target_delta, cfg.accountant, run_id)
        metrics[proto.EPSILON] = run.figure().epsilon
        metrics[proto.SITE_EPSILON] = site_epsilon
    else:  # no DP: the training loss is no more private than the update (allow-non-dp)
        metrics[proto.TRAIN_LOSS] = result.loss
    metrics[proto.UPDATE_BYTES] = state_bytes(exchanged_state(model))  # sizes only: no copy
    return RoundResult(to_arrays(model), metrics, evaluation)


def evaluate_round(
    site: SiteRuntime,
    guard: SiteGuard,
    model: torch.nn.Module,
    server_round: int,
    run_id: str,
) -> MetricRecord:
    """An evaluate message: the site's scores of ``model`` (the global model sent) on its test
    rows, in clear without DP; under DP noised and recorded, within the policy's
    max-evaluations and the budgets."""
    cfg = site.cfg
    guard.policy.check(privacy_request(cfg))
    if not cfg.dp:
        return clear_scores(site.task, model, site.data)
    with guard.ledger.locked() as ledger:
        guard.policy.check_evaluation(evaluations_done(ledger, run_id))
        planned = [evaluation_event(cfg.evaluation_noise)]
        _check_run_target(ledger, run_id, planned, cfg)
        check_budget(ledger, planned, cfg.target_delta, cfg.accountant, guard.policy.max_epsilon)
        return _noised_evaluation(site, model, guard, ledger, run_id, server_round, kind=3)


def _check_run_target(
    ledger: LedgerState, run_id: str, planned: Sequence[DPEvent], cfg: RunConfig
) -> None:
    """This run's own spend stays within the run's target-epsilon (the site's whole history
    is checked against its policy separately)."""
    after = spent(ledger.entries, cfg.target_delta, cfg.accountant, run_id).then_all(planned)
    if not after.within(cfg.target_epsilon):
        raise PrivacyBudgetExceededError(
            f"this round would bring the run's epsilon to {after.figure().epsilon:.4f}, above its "
            f"target-epsilon {cfg.target_epsilon}"
        )
