"""The run's metrics.json and the names it adds to those sites report (fedllm.protocol).

Schema: ``{"config": {...}, "config-sources": {"batch-size": "task", ...}, "rounds":
[{"round": 1, "accuracy": ..., "loss": ..., "epsilon": {"<site>": ...}, ...}], "final":
{"accuracy": ..., "epsilon": <max over sites>, "delta": ...}}``. Epsilons are cumulative per
site; ``null`` when DP is off. `config` holds the values the run used; `config-sources` says
where each task-decided one came from (user, task or global default).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedllm.protocol import ACCURACY, EPSILON, LOSS

# Names in metrics.json beside the ones sites report (fedllm.protocol).
AUC = "auc"
MODEL_BYTES = "model-bytes"  # bytes of the whole model (with any frozen base and adapters)
# Client-level DP: the server's per-round accounting of the released sums.
CLIENT_EPSILON = "client-epsilon"  # cumulative site-level epsilon of the released sums
CLIENT_DELTA = "client-delta"
CLIENT_NOISE_MULTIPLIER = "client-noise-multiplier"  # realized: z * sqrt(summed / sampled)
CLIENT_CLIP = "client-clip"
CLIENT_SUMMED = "client-sites-summed"
# What sites released outside DP under their policies: metrics.json `releases`.
RELEASES = "releases"
FEATURE_STATISTICS = "feature-statistics"  # the sites that sent feature statistics


def clean(value: float) -> float | None:
    """JSON has no NaN/inf: write null instead."""
    return value if math.isfinite(value) else None


@dataclass
class RunMetrics:
    """Everything a run reports, written atomically to ``metrics.json`` after every round."""

    path: Path
    config: dict[str, Any]
    delta: float | None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    epsilon: dict[str, float | None] = field(default_factory=dict)
    initial: dict[str, float | None] = field(default_factory=dict)
    stopped: dict[str, Any] | None = None
    traffic: dict[str, int] = field(default_factory=dict)  # update-bytes, model-bytes
    # Where each task-decided local-training value came from: user, task or global default.
    config_sources: dict[str, str] = field(default_factory=dict)
    # What the sites released outside DP under their policies (e.g. feature statistics).
    releases: dict[str, Any] = field(default_factory=dict)

    def stop(self, server_round: int, reason: str, refused: dict[str, dict[str, str]]) -> None:
        """The run ended before its last round because no sampled site could train."""
        self.stopped = {"round": server_round, "reason": reason, "refused": refused}
        self.write()

    def add_round(self, entry: dict[str, Any]) -> None:
        self.epsilon.update(entry.get(EPSILON, {}))
        entry[EPSILON] = dict(sorted(self.epsilon.items()))  # cumulative: every site seen so far
        self.rounds.append(entry)
        self.write()

    def final(self) -> dict[str, Any]:
        last = self.rounds[-1] if self.rounds else dict(self.initial)
        spent = [e for e in self.epsilon.values() if e is not None]
        out: dict[str, Any] = {
            k: last[k]
            for k in (ACCURACY, LOSS, AUC, "perplexity", "federated-accuracy")
            if k in last
        }
        out.update(self.traffic)
        out[EPSILON] = max(spent) if spent else None
        out["delta"] = self.delta
        out["epsilon-per-site"] = dict(sorted(self.epsilon.items()))
        if self.config.get("client-dp"):  # site-level DP, beside the record-level epsilon
            spent_sums = [r[CLIENT_EPSILON] for r in self.rounds if CLIENT_EPSILON in r]
            out[CLIENT_EPSILON] = spent_sums[-1] if spent_sums else 0.0
            out[CLIENT_DELTA] = self.config.get(CLIENT_DELTA)
        out["rounds-completed"] = len(self.rounds)
        out["stopped"] = self.stopped
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "config-sources": self.config_sources,
            RELEASES: self.releases,
            "initial": self.initial,
            "rounds": self.rounds,
            "final": self.final(),
        }

    def write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, self.path)
