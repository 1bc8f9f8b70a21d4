"""Empirical privacy auditing: an epsilon lower bound measured on a real run, next to the
epsilon the accountant reports (Steinke, Nasr, Jagielski 2023, one-run auditing)."""

from fedllm.audit.bound import epsilon_lower_bound, p_value
from fedllm.audit.guesses import AuditOutcome, Guesses, audit, guess, guess_counts

__all__ = [
    "AuditOutcome",
    "Guesses",
    "audit",
    "epsilon_lower_bound",
    "guess",
    "guess_counts",
    "p_value",
]
