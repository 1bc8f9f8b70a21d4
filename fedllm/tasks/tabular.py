"""Tabular binary classification: breast cancer (embedded), UCI heart disease, any CSV.

The model is logistic regression (``hidden-units = 0``) or a one-hidden-layer tanh MLP; both
are DP-compatible (no BatchNorm). Features are standardized per site on its own train rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedllm.config import GLOBAL_DEFAULTS, RunConfig
from fedllm.data.tabular import (
    Standardizer,
    Table,
    load_breast_cancer_table,
    load_csv_table,
    load_heart_disease_table,
)
from fedllm.errors import DataError
from fedllm.tasks.base import Preprocess, Source, Task


class TabularModel(nn.Module):
    """Logistic regression or a small tanh MLP with one logit out."""

    def __init__(self, in_features: int, hidden_units: int = 0) -> None:
        super().__init__()
        self.in_features = in_features
        if hidden_units == 0:
            self.net: nn.Module = nn.Linear(in_features, 1)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_features, hidden_units), nn.Tanh(), nn.Linear(hidden_units, 1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, 1)
        return self.net(x)  # type: ignore[no-any-return]


class TabularTask(Task):
    num_classes = 2

    def build_model(self, cfg: RunConfig, input_shape: tuple[int, ...]) -> nn.Module:
        torch.manual_seed(cfg.seed)
        return TabularModel(input_shape[0], cfg.hidden_units)

    def preprocess(self) -> Preprocess:
        return Standardizer.fit_balanced

    def load_source(self, cfg: RunConfig, path: str) -> Source:
        return _source(self.load_table(cfg, path))

    def load_table(self, cfg: RunConfig, path: str) -> Table:
        raise NotImplementedError


class BreastCancer(TabularTask):
    """Wisconsin diagnostic breast cancer, shipped with scikit-learn: no download, no path."""

    name = "breast-cancer"
    # The values benchmarks/explore.py tuned on this task at epsilon 1 became the global ones.
    defaults = GLOBAL_DEFAULTS

    def load_table(self, cfg: RunConfig, path: str) -> Table:
        if path:
            raise DataError(
                "task `breast-cancer` uses the data set shipped with scikit-learn; "
                f"`data-path` must be empty, got {path!r}"
            )
        return load_breast_cancer_table()


class HeartDisease(TabularTask):
    """UCI heart disease, four centers (``processed.<center>.data``), one site per center."""

    name = "heart-disease"

    def load_table(self, cfg: RunConfig, path: str) -> Table:
        if not path:
            raise DataError(
                "task `heart-disease` needs `data-path`: a folder with the UCI "
                "processed.<center>.data files, or one such file"
            )
        return load_heart_disease_table(path)


class Csv(TabularTask):
    """Any CSV with a header and a binary `label-column`."""

    name = "csv"

    def load_table(self, cfg: RunConfig, path: str) -> Table:
        if not path:
            raise DataError("task `csv` needs `data-path`: a CSV file or a folder of CSV files")
        return load_csv_table(path, cfg.label_column, site_column=cfg.site_column)


def _source(table: Table) -> Source:
    if len(np.unique(table.y)) < 2:
        raise DataError("the label has a single class in the whole data set: nothing to learn")
    return Source(table.x, table.y, table.groups, table.group_names)
