from __future__ import annotations

import numpy as np
import pytest

from fedllm.data.partition import PartitionRequest, label_skew, partition
from fedllm.errors import ConfigError

LABELS = np.random.default_rng(1).integers(0, 4, 2000)


@pytest.mark.parametrize("name", ["iid", "dirichlet"])
def test_parts_are_disjoint_and_cover_the_data(name: str) -> None:
    parts = partition(name, PartitionRequest(LABELS, num_sites=7, seed=3, alpha=0.5))
    joined = np.concatenate(parts)
    assert sum(len(p) for p in parts) == len(LABELS)
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))


@pytest.mark.parametrize("name", ["iid", "dirichlet"])
def test_same_seed_same_split_other_seed_other_split(name: str) -> None:
    a = partition(name, PartitionRequest(LABELS, 5, seed=11, alpha=0.3))
    b = partition(name, PartitionRequest(LABELS, 5, seed=11, alpha=0.3))
    c = partition(name, PartitionRequest(LABELS, 5, seed=12, alpha=0.3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def skew(alpha: float) -> float:
        return float(
            np.mean(
                [
                    label_skew(
                        LABELS, partition("dirichlet", PartitionRequest(LABELS, 5, s, alpha))
                    )
                    for s in range(5)
                ]
            )
        )

    skews = [skew(a) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2]
    iid_skew = label_skew(LABELS, partition("iid", PartitionRequest(LABELS, 5, 0)))
    assert iid_skew < skews[1]


def test_natural_gives_one_site_per_group() -> None:
    groups = np.repeat([0, 1, 2], [5, 7, 9])
    parts = partition("natural", PartitionRequest(np.zeros(21), 3, 0, groups=groups))
    assert [len(p) for p in parts] == [5, 7, 9]
    with pytest.raises(ConfigError, match="`num-sites` is 4 but the natural split has 3"):
        partition("natural", PartitionRequest(np.zeros(21), 4, 0, groups=groups))
    with pytest.raises(ConfigError, match="natural"):
        partition("natural", PartitionRequest(np.zeros(21), 3, 0))


def test_more_sites_than_examples_is_refused() -> None:
    with pytest.raises(ConfigError, match="`num-sites` 30 is too many for 21 examples"):
        partition("iid", PartitionRequest(np.zeros(21), 30, 0))
