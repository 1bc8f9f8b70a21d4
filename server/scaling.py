"""Federated feature scaling, server side: ask every site for its feature moments once, and
use the pooled scaler for the central test set and every message to the sites.

Feature statistics are not DP: a site sends them only when its policy allows them
(`allow-feature-statistics`) and refuses otherwise; the scaler pools the sites that sent them
(at least one), and the run records which did (metrics.json ``releases``, the report)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.data.tabular import FeatureMoments, Standardizer
from fedllm.errors import FedLLMError
from fedllm.scaling import moments_from_record, scale_split, scaler_config
from fedllm.tasks import Split
from server.replies import reason, refusal, site_name


@dataclass(frozen=True)
class RunScaling:
    """The central test set as the server evaluates on it, what every message to the sites
    carries besides (the pooled scaler; nothing with per-site scaling), and the sites whose
    feature statistics went into the scaler."""

    central_test: Split
    shared: dict[str, list[float]] = field(default_factory=dict)
    released: tuple[str, ...] = ()


@dataclass(frozen=True)
class PooledScaler:
    scaler: Standardizer
    sites: tuple[str, ...]  # who sent their moments


def run_scaling(
    grid: Grid, cfg: RunConfig, central_test: Split, run_dir: Path | None = None
) -> RunScaling:
    """With `feature-scaling = "federated"`, the pooled scaler of every connected site that
    sends its moments (``run_dir``: the run folder, where simulated sites keep their files)."""
    if cfg.feature_scaling != "federated":
        return RunScaling(central_test)
    pooled = federated_scaler(grid, cfg.min_available_nodes, run_dir=run_dir)
    return RunScaling(
        scale_split(central_test, pooled.scaler), scaler_config(pooled.scaler), pooled.sites
    )


def federated_scaler(
    grid: Grid, min_nodes: int, timeout: float = 600.0, run_dir: Path | None = None
) -> PooledScaler:
    """Pool the moments of every connected site that sends them into one scaler (fails
    closed if none does: each site's policy decides)."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise FedLLMError(f"federated scaling: fewer than {min_nodes} sites connected")
        time.sleep(1.0)
    nodes = list(grid.get_node_ids())
    config = ConfigRecord({proto.RUN_DIR: str(run_dir.resolve())} if run_dir else {})
    queries = [
        Message(
            RecordDict({proto.CONFIG: config}),
            dst_node_id=node,
            message_type=MessageType.QUERY,
        )
        for node in nodes
    ]
    total: FeatureMoments | None = None
    used = []
    for reply in grid.send_and_receive(queries, timeout=timeout):
        why = refusal(reply)
        if reply.has_error() or why is not None:
            log(
                WARNING,
                "Federated scaling: %s sent no moments: %s",
                site_name(reply),
                f"refused ({why.kind}): {why.reason}" if why is not None else reason(reply),
            )
            continue
        moments = moments_from_record(reply.content.metric_records[proto.METRICS])
        total = moments if total is None else total + moments
        used.append(site_name(reply))
    if total is None:
        raise FedLLMError(
            "federated scaling: no site returned its feature moments (a site sends them only "
            "when its policy says allow-feature-statistics = true)"
        )
    log(
        INFO,
        "Federated scaling: pooled per-feature mean/std of %d rows from %s",
        int(total.count.max()),
        ", ".join(sorted(used)),
    )
    return PooledScaler(total.standardizer(), tuple(sorted(used)))
