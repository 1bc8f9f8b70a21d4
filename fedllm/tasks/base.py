"""What every task provides, and the shared path from raw rows to per-site splits.

A task is a model + data + loss + metrics. In simulation it builds the whole federation from one
source (partition, then split each site's rows into train/test, then fit preprocessing on each
site's own train rows). In deployment a site builds only itself from its own file.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedllm.config import RunConfig, TrainingDefaults
from fedllm.data.partition import PartitionRequest, partition
from fedllm.errors import ConfigError

# Fitted on a site's train rows and labels, returns the transform for its train and test rows.
Preprocess = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class Split:
    """Inputs (N, ...) float32 and integer labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class SiteData:
    name: str
    train: Split
    test: Split


@dataclass(frozen=True)
class Federation:
    """Every site's data, the held-out set for central evaluation, and the model's I/O."""

    sites: tuple[SiteData, ...]
    central_test: Split
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class Source:
    """Rows as loaded: features, labels, optional natural groups and a separate test set."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    test: tuple[np.ndarray, np.ndarray] | None = None


class Task(ABC):
    """A model, its data and how to train and score it."""

    name: ClassVar[str]
    num_classes: ClassVar[int]
    # Local-training values tuned for this task: used wherever the run config leaves the key at
    # 0 ("the task decides"); a key left None here falls back to config.GLOBAL_DEFAULTS.
    defaults: ClassVar[TrainingDefaults] = TrainingDefaults()

    @abstractmethod
    def load_source(self, cfg: RunConfig, path: str) -> Source:
        """Read the task's data from ``path`` (or the embedded data set when it has one)."""

    @abstractmethod
    def build_model(self, cfg: RunConfig, input_shape: tuple[int, ...]) -> nn.Module:
        """A fresh model; the same seed gives the same initial weights."""

    def preprocess(self) -> Preprocess | None:
        """Per-site preprocessing fitted on the site's train rows; None for fixed scaling."""
        return None

    def loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.num_classes == 2:  # one logit per row: (B, 1)
            return nn.functional.binary_cross_entropy_with_logits(
                logits.squeeze(-1), y.float(), reduction=reduction
            )
        return nn.functional.cross_entropy(logits, y, reduction=reduction)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probability of the positive class (binary) or class probabilities (B, C)."""
        if self.num_classes == 2:
            return torch.sigmoid(logits.squeeze(-1))
        return torch.softmax(logits, dim=-1)

    def privacy_unit(self, cfg: RunConfig) -> str:
        """What one DP record is, for the report; empty = one row (the default)."""
        return ""

    def extra_metrics(self, scores: dict[str, float]) -> dict[str, float]:
        """Task-specific metrics derived from the evaluation scores (e.g. perplexity)."""
        return {}

    def federation(self, cfg: RunConfig) -> Federation:
        """All sites of a simulated federation (partition, split, preprocess per site)."""
        return build_federation(
            self, cfg, self.load_source(cfg, cfg.data_path), cfg.num_sites, cfg.partitioner
        )

    def site(self, cfg: RunConfig, path: str, name: str) -> SiteData:
        """One deployed site from its own data file: all its rows are its own."""
        fed = build_federation(self, cfg, self.load_source(cfg, path), 1, "iid")
        return SiteData(name, fed.sites[0].train, fed.sites[0].test)


def build_federation(
    task: Task, cfg: RunConfig, source: Source, num_sites: int, partitioner: str
) -> Federation:
    min_size = max(2, math.ceil(2 / cfg.test_fraction)) if source.test is None else 1
    parts = partition(
        partitioner,
        PartitionRequest(
            labels=source.y,
            num_sites=num_sites,
            seed=cfg.seed,
            alpha=cfg.dirichlet_alpha,
            groups=source.groups,
            min_size=min_size,
        ),
    )
    test_parts: list[np.ndarray] | None = None
    if source.test is not None:
        rng = np.random.default_rng(cfg.seed + 1)
        test_parts = np.array_split(rng.permutation(len(source.test[1])), num_sites)
    # Federated scaling is fitted later, from every site's released moments (fedllm.scaling).
    preprocess = task.preprocess() if cfg.feature_scaling == "site" else None
    if cfg.feature_scaling == "federated" and task.preprocess() is None:
        raise ConfigError(
            f"`feature-scaling` 'federated' is for tabular tasks; task `{task.name}` uses "
            "fixed scaling: leave it at 'site'"
        )
    sites, tests = [], []
    for i, rows in enumerate(parts):
        if source.test is not None and test_parts is not None:
            train_x, train_y = source.x[rows], source.y[rows]
            test_x, test_y = source.test[0][test_parts[i]], source.test[1][test_parts[i]]
        else:
            rng = np.random.default_rng([cfg.seed, i, 7])
            order = rng.permutation(rows)
            n_test = max(1, round(len(rows) * cfg.test_fraction))
            test_rows, train_rows = order[:n_test], order[n_test:]
            train_x, train_y = source.x[train_rows], source.y[train_rows]
            test_x, test_y = source.x[test_rows], source.y[test_rows]
        if preprocess is not None:
            transform = preprocess(train_x, train_y)
            train_x, test_x = transform(train_x), transform(test_x)
        name = source.group_names[i] if partitioner == "natural" else f"site-{i}"
        site = SiteData(name, _split(train_x, train_y), _split(test_x, test_y))
        sites.append(site)
        tests.append(site.test)
    # A source with its own test set (MNIST's t10k) uses fixed scaling, so it is scored as is.
    central = (
        _split(*source.test)
        if source.test is not None
        else Split(torch.cat([t.x for t in tests]), torch.cat([t.y for t in tests]))
    )
    return Federation(tuple(sites), central, tuple(sites[0].train.x.shape[1:]), task.num_classes)


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(
        torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32),
        torch.as_tensor(np.ascontiguousarray(y), dtype=torch.int64),
    )
