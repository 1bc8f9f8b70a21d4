"""Empirical privacy auditing: an epsilon lower bound measured on a real run, next to the
epsilon the accountant reports (one-run auditing: Steinke, Nasr, Jagielski 2023, and the f-DP
analysis of Mahloujifar, Melis, Chaudhuri 2024 against the audited site's own trade-off
curves)."""

from fedllm.audit.bound import epsilon_lower_bound, p_value
from fedllm.audit.families import Family, GaussianFamily, ScheduleFamily, family_for
from fedllm.audit.fdp import gdp_epsilon, gdp_lower_bound, rejects
from fedllm.audit.guesses import Analysis, AuditOutcome, Guesses, audit, guess, guess_counts

__all__ = [
    "Analysis",
    "AuditOutcome",
    "Family",
    "GaussianFamily",
    "Guesses",
    "ScheduleFamily",
    "audit",
    "epsilon_lower_bound",
    "family_for",
    "gdp_epsilon",
    "gdp_lower_bound",
    "guess",
    "guess_counts",
    "p_value",
    "rejects",
]
