"""Split a data set's rows among sites: IID, Dirichlet label skew, or natural groups.

Every partitioner is deterministic for a seed and returns one index array per site; the
arrays are disjoint and together cover every row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedllm.errors import ConfigError


@dataclass(frozen=True)
class PartitionRequest:
    """What a partitioner may use: labels, group ids (natural split), site count, seed."""

    labels: np.ndarray
    num_sites: int
    seed: int
    alpha: float = 1.0
    groups: np.ndarray | None = None
    min_size: int = 2


Partitioner = Callable[[PartitionRequest], list[np.ndarray]]


def iid(req: PartitionRequest) -> list[np.ndarray]:
    """A uniformly random split into near-equal parts."""
    rng = np.random.default_rng(req.seed)
    order = rng.permutation(len(req.labels))
    return [np.sort(part) for part in np.array_split(order, req.num_sites)]


def dirichlet(req: PartitionRequest, max_tries: int = 1000) -> list[np.ndarray]:
    """Label skew: each class is spread over sites by proportions drawn from Dir(alpha).

    Hsu et al. 2019, "Measuring the effects of non-identical data distribution". Smaller alpha,
    stronger skew. Draws are repeated until every site holds ``min_size`` rows.
    """
    rng = np.random.default_rng(req.seed)
    classes = np.unique(req.labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(req.num_sites)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(req.labels == c))
            share = rng.dirichlet(np.full(req.num_sites, req.alpha))
            cuts = (np.cumsum(share)[:-1] * len(rows)).astype(int)
            for site, chunk in enumerate(np.split(rows, cuts)):
                parts[site].append(chunk)
        sites = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(s) for s in sites) >= req.min_size:
            return sites
    raise ConfigError(
        f"`dirichlet-alpha` {req.alpha} leaves some of {req.num_sites} sites with fewer than "
        f"{req.min_size} rows of {len(req.labels)} after {max_tries} draws: "
        "raise the alpha or lower `num-sites`"
    )


def natural(req: PartitionRequest) -> list[np.ndarray]:
    """One site per group (one file or one column value per site)."""
    if req.groups is None:
        raise ConfigError(
            "`partitioner` 'natural' needs data with a natural split "
            "(one file or one `site-column` value per site); this data has none"
        )
    group_ids = np.unique(req.groups)
    if len(group_ids) != req.num_sites:
        raise ConfigError(
            f"`num-sites` is {req.num_sites} but the natural split has {len(group_ids)} sites"
        )
    return [np.flatnonzero(req.groups == g) for g in group_ids]


PARTITIONERS: dict[str, Partitioner] = {"iid": iid, "dirichlet": dirichlet, "natural": natural}


def partition(name: str, req: PartitionRequest) -> list[np.ndarray]:
    """Run the partitioner ``name`` after checking the request can be met."""
    if name not in PARTITIONERS:
        raise ConfigError(f"`partitioner` must be one of {', '.join(PARTITIONERS)}, got {name!r}")
    if req.num_sites > len(req.labels) // max(req.min_size, 1):
        raise ConfigError(
            f"`num-sites` {req.num_sites} is too many for {len(req.labels)} examples "
            f"(each site needs at least {req.min_size})"
        )
    return PARTITIONERS[name](req)


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each site's label distribution and the whole's."""
    classes = np.unique(labels)
    overall = np.array([(labels == c).mean() for c in classes])
    distances = []
    for part in parts:
        site = np.array([(labels[part] == c).mean() for c in classes]) if len(part) else overall
        distances.append(0.5 * np.abs(site - overall).sum())
    return float(np.mean(distances))
