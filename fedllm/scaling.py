"""Federated feature scaling: per-feature moments out of sites, one pooled scaler back in.

With ``feature-scaling = "federated"`` each site releases, once per run, the count, sum and sum
of squares of each feature over its training rows; the server adds them up and sends every site
the pooled mean and standard deviation. This release is aggregate statistics, not DP: it is
outside the record-level epsilon the sites report, and the report says so. The default
``"site"`` releases nothing (each site scales with its own rows).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from flwr.app import ConfigRecord, MetricRecord

from fedllm.data.tabular import FeatureMoments, Standardizer
from fedllm.errors import ConfigError
from fedllm.protocol import FEATURE_COUNT as COUNT
from fedllm.protocol import FEATURE_SUM as SUM
from fedllm.protocol import FEATURE_SUM_SQ as SUM_SQ
from fedllm.protocol import SCALER_MEAN as MEAN
from fedllm.protocol import SCALER_STD as STD
from fedllm.tasks.base import SiteData, Split


def moments_record(moments: FeatureMoments) -> MetricRecord:
    return MetricRecord(
        {
            COUNT: moments.count.tolist(),
            SUM: moments.total.tolist(),
            SUM_SQ: moments.total_sq.tolist(),
        }
    )


def moments_from_record(record: MetricRecord) -> FeatureMoments:
    arrays = [
        np.asarray(cast(list[float], record[k]), dtype=np.float64) for k in (COUNT, SUM, SUM_SQ)
    ]
    if not (arrays[0].shape == arrays[1].shape == arrays[2].shape) or not all(
        np.isfinite(a).all() for a in arrays
    ):
        raise ConfigError("a site's feature moments are malformed (unequal or non-finite lists)")
    return FeatureMoments(*arrays)


def scaler_config(scaler: Standardizer) -> dict[str, list[float]]:
    """The pooled scaler as ConfigRecord entries sent with every train/evaluate message."""
    return {MEAN: scaler.mean.astype(float).tolist(), STD: scaler.std.astype(float).tolist()}


def scaler_from_config(config: ConfigRecord, num_features: int) -> Standardizer:
    if MEAN not in config or STD not in config:
        raise ConfigError("`feature-scaling` is 'federated' but the server sent no pooled scaler")
    scaler = Standardizer(
        np.asarray(cast(list[float], config[MEAN])), np.asarray(cast(list[float], config[STD]))
    )
    if scaler.mean.shape != (num_features,):
        raise ConfigError(
            f"the pooled scaler covers {scaler.mean.shape[0]} features, "
            f"this site has {num_features}"
        )
    return scaler


def scale_split(split: Split, scaler: Standardizer) -> Split:
    return Split(torch.as_tensor(scaler(split.x.numpy())), split.y)


def scale_site(site: SiteData, scaler: Standardizer) -> SiteData:
    return SiteData(site.name, scale_split(site.train, scaler), scale_split(site.test, scaler))
