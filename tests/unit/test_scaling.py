from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedllm.data.tabular import FeatureMoments, Standardizer
from fedllm.errors import ConfigError, DataError
from fedllm.scaling import (
    moments_from_record,
    moments_record,
    scaler_config,
    scaler_from_config,
)


def test_pooled_moments_equal_statistics_of_all_rows() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(3, 2, (40, 4)), rng.normal(-1, 5, (25, 4))
    a[3, 1] = np.nan
    pooled = moments_from_record(moments_record(FeatureMoments.of(a))) + FeatureMoments.of(b)
    scaler = pooled.standardizer()
    both = np.concatenate([a, b])
    np.testing.assert_allclose(scaler.mean, np.nanmean(both, axis=0), rtol=1e-5)
    np.testing.assert_allclose(scaler.std, np.nanstd(both, axis=0), rtol=1e-5)
    np.testing.assert_allclose(Standardizer.fit(both).mean, scaler.mean, rtol=1e-6)


def test_sites_with_different_schemas_are_refused() -> None:
    with pytest.raises(DataError, match="cover 3 and 4 features"):
        FeatureMoments.of(np.zeros((2, 3))) + FeatureMoments.of(np.zeros((2, 4)))


def test_a_site_needs_the_pooled_scaler_of_its_own_width() -> None:
    scaler = Standardizer(np.zeros(3), np.ones(3))
    record = ConfigRecord(scaler_config(scaler))
    assert scaler_from_config(record, 3).mean.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="covers 3 features, this site has 5"):
        scaler_from_config(record, 5)
    with pytest.raises(ConfigError, match="sent no pooled scaler"):
        scaler_from_config(ConfigRecord(), 3)
