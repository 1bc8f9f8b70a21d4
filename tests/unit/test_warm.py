"""A deployed site's warm state: its data read once per run while the file is unchanged, read
again when it changes; its rows scaled once per scaler."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fedllm import warm
from fedllm.data.tabular import Standardizer
from fedllm.tasks import get_task
from tests.conftest import write_heart_center


def test_the_sites_data_is_read_once_while_the_file_is_unchanged(
    config: Any, tmp_path: Path
) -> None:
    cfg, task = config(task="heart-disease"), get_task("heart-disease")
    path = tmp_path / "processed.site.data"
    write_heart_center(path, 40, 0)
    first = warm.site_data(task, cfg, str(path), "a")
    assert warm.site_data(task, cfg, str(path), "a") is first
    assert warm.site_data(task, config(task="heart-disease", seed=1), str(path), "a") is not first
    write_heart_center(path, 60, 1)  # the site replaced its file: read again
    os.utime(path, ns=(1, 1))  # even with the same size and an old time
    changed = warm.site_data(task, cfg, str(path), "a")
    assert changed is not first and len(changed.train) + len(changed.test) > len(first.train)


def test_scaled_rows_are_kept_per_scaler(config: Any, tmp_path: Path) -> None:
    cfg, task = config(task="heart-disease"), get_task("heart-disease")
    path = tmp_path / "processed.site.data"
    write_heart_center(path, 40, 0)
    site = warm.site_data(task, cfg, str(path), "a")
    features = site.train.x.shape[1]
    scaler = Standardizer(np.zeros(features), np.full(features, 2.0))
    scaled = warm.scaled(site, scaler)
    assert warm.scaled(site, Standardizer(np.zeros(features), np.full(features, 2.0))) is scaled
    assert np.allclose(scaled.train.x.numpy(), site.train.x.numpy() / 2.0)
    assert warm.scaled(site, Standardizer(np.ones(features), np.ones(features))) is not scaled
