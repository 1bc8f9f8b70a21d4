"""One round of local training at a site, with its privacy accounting.

The noise multiplier is calibrated once per run for the site's whole planned schedule
(`num-server-rounds` x local steps at its sampling rate) and kept in ``context.state``. What
the site has spent comes from its ledger alone: the composed privacy loss of the verified
entries, kept per ledger head (:func:`fedllm.privacy.spent`), so the round's checks, its new
entry and its reported epsilon compose only this round's event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from clients.site import SiteGuard
from fedllm import protocol as proto
from fedllm import warm
from fedllm.config import RunConfig
from fedllm.errors import ConfigError, PrivacyBudgetExceededError
from fedllm.privacy import (
    DPEvent,
    DPParams,
    DPSchedule,
    LedgerState,
    PrivacyRequest,
    calibrate_noise,
    check_budget,
    spent,
)
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

    @classmethod
    def from_context(cls, context: Context) -> SiteRuntime:
        """Simulation: the site's partition of the federation; deployment: the SuperNode's
        own `data-path` from its node-config."""
        cfg = RunConfig.from_flower(context.run_config)
        task = get_task(cfg.task)
        node = context.node_config
        if proto.NODE_DATA_PATH in node:  # read once per run while the file is unchanged
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
        return cls(cfg, task, load_federation(cfg).sites[index], index)

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


def record_level_noise_multiplier(cfg: RunConfig, schedule: DPSchedule, state: RecordDict) -> float:
    """The DP-SGD noise multiplier for the site's whole planned schedule at the run's
    target-epsilon, calibrated once per run and cached in the site's state."""
    key = (
        f"{cfg.target_epsilon!r}|{cfg.target_delta!r}|{schedule.sample_rate!r}|"
        f"{schedule.total_steps}|{cfg.accountant}"
    )
    cached = state.config_records.get(proto.STATE_CALIBRATION)
    if cached is not None and cached["key"] == key:
        return float(cached["noise-multiplier"])  # type: ignore[arg-type]
    sigma = calibrate_noise(cfg.target_epsilon, cfg.target_delta, schedule, cfg.accountant)
    state[proto.STATE_CALIBRATION] = ConfigRecord({"key": key, "noise-multiplier": sigma})
    return sigma


def privacy_request(cfg: RunConfig) -> PrivacyRequest:
    return PrivacyRequest(
        cfg.dp,
        cfg.target_epsilon,
        cfg.target_delta,
        cfg.max_grad_norm,
        cfg.accountant,
        reproducible_noise=cfg.reproducible_noise,
    )


def train_round(
    site: SiteRuntime,
    guard: SiteGuard,
    arrays: ArrayRecord,
    server_round: int,
    run_id: str,
    state: RecordDict,
) -> tuple[ArrayRecord, MetricRecord]:
    """Check the request against the site's policy and ledger, train, record the spend in the
    ledger (durably, before returning the update), and report the cumulative epsilon.

    Raises PolicyError, PrivacyBudgetExceededError or LedgerError (a refusal) before training
    when the round is outside the policy, past the budget, or the ledger does not verify.
    """
    cfg = site.cfg
    guard.policy.check(privacy_request(cfg))
    schedule = DPSchedule.for_site(
        len(site.data.train), cfg.batch_size, cfg.local_epochs, cfg.num_server_rounds
    )
    metrics = MetricRecord({proto.NUM_EXAMPLES: len(site.data.train)})
    dp, planned = None, None
    if cfg.dp:
        sigma = record_level_noise_multiplier(cfg, schedule, state)
        guard.policy.check_noise(sigma)
        dp = DPParams(
            sigma, cfg.max_grad_norm, cfg.accountant, grad_sample_mode=cfg.grad_sample_mode
        )
        planned = schedule.round_event(sigma)
        metrics[proto.NOISE_MULTIPLIER] = sigma
    with guard.ledger.locked() as ledger:
        if planned is not None:
            _check_run_target(ledger, run_id, planned, cfg)
            check_budget(
                ledger, planned, cfg.target_delta, cfg.accountant, guard.policy.max_epsilon
            )
        public_seed = cfg.seed * 1_000_003 + server_round * 1_009 + site.site_index
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
        )
        model = site.model(arrays)
        result = train_local(site.task, model, site.data.train, settings, dp)
        events = result.events or [DPEvent(0.0, schedule.sample_rate, result.steps)]
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
    metrics[proto.TRAIN_LOSS] = result.loss
    if cfg.dp:
        site_epsilon = math.inf if entry.epsilon is None else entry.epsilon
        if site_epsilon > guard.policy.max_epsilon:  # recorded, but the update is withheld
            raise PrivacyBudgetExceededError(
                f"the round took epsilon to {site_epsilon:.4f}, above the site's max-epsilon "
                f"{guard.policy.max_epsilon}; the spend is recorded and the update withheld"
            )
        run = spent(ledger.entries, cfg.target_delta, cfg.accountant, run_id)
        metrics[proto.EPSILON] = run.epsilon()
        metrics[proto.SITE_EPSILON] = site_epsilon
    metrics[proto.UPDATE_BYTES] = state_bytes(exchanged_state(model))  # sizes only: no copy
    return to_arrays(model), metrics


def _check_run_target(ledger: LedgerState, run_id: str, planned: DPEvent, cfg: RunConfig) -> None:
    """This run's own spend stays within the run's target-epsilon (the site's whole history
    is checked against its policy separately)."""
    after = spent(ledger.entries, cfg.target_delta, cfg.accountant, run_id).then(planned)
    if not after.within(cfg.target_epsilon):
        raise PrivacyBudgetExceededError(
            f"this round would bring the run's epsilon to {after.epsilon():.4f}, above its "
            f"target-epsilon {cfg.target_epsilon}"
        )
