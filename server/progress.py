"""The one line a round prints: accuracy, AUC, and the privacy spent so far, summarized so it
stays one line at any number of sites."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping
from typing import Any

from fedllm import metrics as m
from fedllm import protocol as proto
from fedllm.config import RunConfig

LISTED = 5  # up to this many sites are named one by one; more are summarized
CLOSEST = 3  # sites named as closest to their target in a summary


def epsilon_summary(spent: Mapping[str, float | None], target: float) -> str:
    """Every site's cumulative epsilon when there are few; else min / median / max over the
    sites that have trained, and the sites closest to the run's per-site target."""
    known = {site: eps for site, eps in spent.items() if eps is not None}
    if len(known) <= LISTED:
        return ", ".join(f"{site} {eps:.3f}" for site, eps in sorted(known.items()))
    values = sorted(known.values())
    closest = sorted(known.items(), key=lambda item: (-item[1], item[0]))[:CLOSEST]
    return (
        f"min {values[0]:.3f} / median {statistics.median(values):.3f} / max {values[-1]:.3f} "
        f"over {len(values)} sites; closest to target {target:g}: "
        + ", ".join(f"{site} {eps:.3f}" for site, eps in closest)
    )


def refusal_summary(refused: Mapping[str, Mapping[str, str]]) -> str:
    """The sites that refused this round with the kind of refusal; a count by kind when many."""
    if len(refused) <= LISTED:
        return ", ".join(f"{site} ({r[proto.REFUSAL_KIND]})" for site, r in refused.items())
    kinds = Counter(r[proto.REFUSAL_KIND] for r in refused.values())
    return f"{len(refused)} sites (" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")"


def progress_line(entry: Mapping[str, Any], cfg: RunConfig, elapsed: float) -> str:
    """``entry``: the round as metrics.json holds it (epsilon cumulative over every site seen)."""
    shown = epsilon_summary(entry[proto.EPSILON], cfg.target_epsilon) if cfg.dp else "n/a (DP off)"
    if cfg.dp and entry.get("refused"):
        shown += " | refused: " + refusal_summary(entry["refused"])
    if cfg.client_dp and entry.get(m.CLIENT_EPSILON) is not None:
        shown += f" | site-level epsilon {entry[m.CLIENT_EPSILON]:.3f}"
    accuracy = entry.get(proto.ACCURACY)
    auc = entry.get(m.AUC)
    return (
        f"fedllm round {entry['round']}/{cfg.num_server_rounds} ({elapsed:.0f}s): "
        f"accuracy {'-' if accuracy is None else f'{accuracy:.4f}'}, "
        f"auc {'-' if auc is None else f'{auc:.4f}'} | epsilon {shown}"
    )
