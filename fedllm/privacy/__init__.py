"""Privacy: noise calibration for the whole schedule, accounting, Opacus wrapping, and the
site's own policy and ledger."""

from fedllm.privacy.accounting import (
    ACCOUNTANTS,
    DPEvent,
    DPSchedule,
    calibrate_noise,
    epsilon,
    merge,
)
from fedllm.privacy.engine import (
    GRAD_SAMPLE_MODES,
    DPParams,
    PrivateStep,
    choose_mode,
    make_private,
)
from fedllm.privacy.ledger import (
    LedgerEntry,
    LedgerState,
    PrivacyLedger,
    check_budget,
    history_epsilon,
)
from fedllm.privacy.policy import PrivacyRequest, SitePolicy
from fedllm.privacy.site_report import ReportCheck, verify_site_report, write_site_report
from fedllm.privacy.spend import PrivacySpend

__all__ = [
    "ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "DPEvent",
    "DPParams",
    "DPSchedule",
    "LedgerEntry",
    "LedgerState",
    "PrivacyLedger",
    "PrivacyRequest",
    "PrivacySpend",
    "PrivateStep",
    "ReportCheck",
    "SitePolicy",
    "calibrate_noise",
    "check_budget",
    "choose_mode",
    "epsilon",
    "history_epsilon",
    "make_private",
    "merge",
    "verify_site_report",
    "write_site_report",
]
