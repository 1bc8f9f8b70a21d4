"""Federated scaling's per-feature statistics: released only where the site's policy allows.

The count, sum and sum of squares of each feature over the site's training rows are aggregate
statistics, not DP: no epsilon covers them. A site sends them only when its policy says
``allow-feature-statistics = true`` (off by default; a simulated site's policy follows the run's
`feature-scaling`), and records that they left in its ledger (an entry of kind ``statistics``,
once per run: no steps, so it adds nothing to the epsilon it reports, which does not cover
them); the run's report names the sites that sent them.
"""

from __future__ import annotations

from flwr.app import MetricRecord

from clients.site import SiteGuard
from clients.train import SiteRuntime, privacy_request
from fedllm.data.tabular import FeatureMoments
from fedllm.privacy import DPEvent
from fedllm.privacy.chain import STATISTICS
from fedllm.scaling import moments_record

# Composes nothing: released outside DP, recorded so the ledger lists everything that left.
UNACCOUNTED = DPEvent(noise_multiplier=0.0, sample_rate=1.0, steps=0)


def release_statistics(site: SiteRuntime, guard: SiteGuard, run_id: str) -> MetricRecord:
    """The site's feature moments, after the policy allowed them and the ledger recorded them
    (raises PolicyError, a refusal, when the policy does not allow them or the run)."""
    guard.policy.check(privacy_request(site.cfg))
    guard.policy.check_feature_statistics()
    moments = FeatureMoments.of(site.data.train.x.numpy())
    with guard.ledger.locked() as ledger:
        if not any(e.run_id == run_id and e.kind == STATISTICS for e in ledger.entries):
            guard.ledger.append(
                ledger,
                site=site.data.name,
                run_id=run_id,
                server_round=0,
                event=UNACCOUNTED,
                clip_norm=0.0,
                delta=site.cfg.target_delta,
                accountant=site.cfg.accountant,
                kind=STATISTICS,
            )
    return moments_record(moments)
