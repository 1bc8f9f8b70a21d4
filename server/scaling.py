"""Federated feature scaling, server side: ask every site for its feature moments once, and
use the pooled scaler for the central test set and every message to the sites."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.data.tabular import FeatureMoments, Standardizer
from fedllm.errors import FedLLMError
from fedllm.scaling import moments_from_record, scale_split, scaler_config
from fedllm.tasks import Split
from server.replies import reason, site_name


@dataclass(frozen=True)
class RunScaling:
    """The central test set as the server evaluates on it, and what every message to the sites
    carries besides (the pooled scaler; nothing with per-site scaling)."""

    central_test: Split
    shared: dict[str, list[float]] = field(default_factory=dict)


def run_scaling(grid: Grid, cfg: RunConfig, central_test: Split) -> RunScaling:
    """With `feature-scaling = "federated"`, the pooled scaler of every connected site."""
    if cfg.feature_scaling != "federated":
        return RunScaling(central_test)
    scaler = federated_scaler(grid, cfg.min_available_nodes)
    return RunScaling(scale_split(central_test, scaler), scaler_config(scaler))


def federated_scaler(grid: Grid, min_nodes: int, timeout: float = 600.0) -> Standardizer:
    """Pool the moments of every connected site into one scaler (fails closed if none reply)."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise FedLLMError(f"federated scaling: fewer than {min_nodes} sites connected")
        time.sleep(1.0)
    nodes = list(grid.get_node_ids())
    queries = [
        Message(
            RecordDict({proto.CONFIG: ConfigRecord()}),
            dst_node_id=node,
            message_type=MessageType.QUERY,
        )
        for node in nodes
    ]
    total: FeatureMoments | None = None
    used = []
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            log(
                WARNING,
                "Federated scaling: %s sent no moments: %s",
                site_name(reply),
                reason(reply),
            )
            continue
        moments = moments_from_record(reply.content.metric_records[proto.METRICS])
        total = moments if total is None else total + moments
        used.append(site_name(reply))
    if total is None:
        raise FedLLMError("federated scaling: no site returned its feature moments")
    log(
        INFO,
        "Federated scaling: pooled per-feature mean/std of %d rows from %s",
        int(total.count.max()),
        ", ".join(sorted(used)),
    )
    return total.standardizer()
