"""One round of local training at a site, with its privacy accounting.

The noise multiplier is calibrated once per run for the site's whole planned schedule
(`num-server-rounds` x local steps at its sampling rate) and kept in ``context.state`` with
every DP event spent, so the epsilon a site reports is cumulative and replayable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from fedllm import metrics as m
from fedllm.config import RunConfig
from fedllm.errors import ConfigError
from fedllm.privacy import DPParams, DPSchedule, PrivacySpend, calibrate_noise
from fedllm.scaling import scale_site, scaler_from_config
from fedllm.tasks import SiteData, Task, get_task, load_federation
from fedllm.training import LocalTraining, train_local
from fedllm.weights import load_arrays, to_arrays

PARTITION_ID, NUM_PARTITIONS, DATA_PATH = "partition-id", "num-partitions", "data-path"


@dataclass(frozen=True)
class SiteRuntime:
    """What a site works with: the run config, its task and its own data."""

    cfg: RunConfig
    task: Task
    data: SiteData
    site_index: int

    @classmethod
    def from_context(cls, context: Context) -> SiteRuntime:
        """Simulation: the site's partition of the federation; deployment: the SuperNode's
        own `data-path` from its node-config."""
        cfg = RunConfig.from_flower(context.run_config)
        task = get_task(cfg.task)
        node = context.node_config
        if DATA_PATH in node:
            name = str(node.get("site-name", f"node-{context.node_id}"))
            return cls(cfg, task, task.site(cfg, str(node[DATA_PATH]), name), 0)
        index = int(node[PARTITION_ID])  # type: ignore[arg-type]
        nodes = int(node.get(NUM_PARTITIONS, cfg.num_sites))  # type: ignore[arg-type]
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
        return replace(self, data=scale_site(self.data, scaler))

    def model(self, arrays: ArrayRecord) -> torch.nn.Module:
        model = self.task.build_model(self.cfg, tuple(self.data.train.x.shape[1:]))
        load_arrays(model, arrays)
        return model


def noise_multiplier(cfg: RunConfig, schedule: DPSchedule, state: RecordDict) -> float:
    """The site's calibrated noise, computed once per run and cached in its state."""
    key = (
        f"{cfg.target_epsilon!r}|{cfg.target_delta!r}|{schedule.sample_rate!r}|"
        f"{schedule.total_steps}|{cfg.accountant}"
    )
    cached = state.config_records.get(m.STATE_CALIBRATION)
    if cached is not None and cached["key"] == key:
        return float(cached["noise-multiplier"])  # type: ignore[arg-type]
    sigma = calibrate_noise(cfg.target_epsilon, cfg.target_delta, schedule, cfg.accountant)
    state[m.STATE_CALIBRATION] = ConfigRecord({"key": key, "noise-multiplier": sigma})
    return sigma


def train_round(
    site: SiteRuntime, arrays: ArrayRecord, server_round: int, state: RecordDict
) -> tuple[ArrayRecord, MetricRecord]:
    cfg = site.cfg
    model = site.model(arrays)
    spend = (
        PrivacySpend.from_record(state.config_records[m.STATE_SPEND])
        if m.STATE_SPEND in state.config_records
        else PrivacySpend(cfg.accountant, cfg.target_delta)
    )
    dp = None
    metrics = MetricRecord({m.NUM_EXAMPLES: len(site.data.train)})
    if cfg.dp:
        schedule = DPSchedule.for_site(
            len(site.data.train), cfg.batch_size, cfg.local_epochs, cfg.num_server_rounds
        )
        sigma = noise_multiplier(cfg, schedule, state)
        spend.check_budget(schedule.round_event(sigma), cfg.target_epsilon)
        dp = DPParams(sigma, cfg.max_grad_norm, cfg.accountant)
        metrics[m.NOISE_MULTIPLIER] = sigma
    settings = LocalTraining(
        cfg.local_epochs,
        cfg.batch_size,
        cfg.learning_rate,
        seed=cfg.seed * 1_000_003 + server_round * 1_009 + site.site_index,
    )
    result = train_local(site.task, model, site.data.train, settings, dp)
    metrics[m.TRAIN_LOSS] = result.loss
    if cfg.dp:
        spend.record(result.events)
        state[m.STATE_SPEND] = spend.to_record()
        metrics[m.EPSILON] = spend.epsilon()
    return to_arrays(model), metrics
