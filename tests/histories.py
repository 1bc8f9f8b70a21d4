"""Random DP histories (hypothesis strategies) and the independent evaluation each
accountant's figure must equal: Opacus's own accountants for `prv` and `rdp`, dp-accounting's
PLDAccountant for `pld`."""

from __future__ import annotations

import dp_accounting
from dp_accounting.pld import PLDAccountant
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from fedllm.privacy import DPEvent, merge
from fedllm.privacy.accountants import pld as pld_module

mechanisms = st.tuples(
    st.sampled_from([0.8, 1.1, 2.0, 6.0]),  # noise multiplier
    st.sampled_from([0.02, 0.2, 0.5, 1.0]),  # sample rate
    st.integers(1, 40),  # steps
)
identical = st.builds(lambda m, n: [DPEvent(*m)] * n, mechanisms, st.integers(1, 8))
varying = st.lists(mechanisms.map(lambda m: DPEvent(*m)), min_size=1, max_size=5)
histories = st.one_of(identical, varying)


def reference(events: list[DPEvent], delta: float, accountant: str) -> float:
    """A fresh evaluation of the whole history by the accountant our figure must equal."""
    if accountant == "pld":
        pld = PLDAccountant(value_discretization_interval=pld_module.INTERVAL)
        for e in merge(events):
            step = dp_accounting.PoissonSampledDpEvent(
                e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
            )
            pld.compose(dp_accounting.SelfComposedDpEvent(step, e.steps))
        return float(pld.get_epsilon(delta))
    opacus = PRVAccountant() if accountant == "prv" else RDPAccountant()
    opacus.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in merge(events)]
    return float(opacus.get_epsilon(delta=delta))


# benchmarks/round_overhead.py's long ledger, one event a run: a site that takes part in runs on
# five schedules in turn (sites of 240, 110, 2000, 600 and 12000 examples), about epsilon 1 a
# run by RDP at delta 1e-5. Fifty such runs are 25,600 steps on 50 distinct schedules.
RUN_SCHEDULES = (
    DPEvent(13.0, 0.5, 40),
    DPEvent(18.2, 1.0, 20),
    DPEvent(4.2, 0.05, 400),
    DPEvent(8.3, 0.2, 100),
    DPEvent(2.0, 0.01, 2000),
)


def many_runs(n: int) -> list[DPEvent]:
    """The first ``n`` runs of that site, oldest first."""
    return [RUN_SCHEDULES[i % len(RUN_SCHEDULES)] for i in range(n)]
