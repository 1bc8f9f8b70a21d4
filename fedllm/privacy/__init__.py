"""Privacy: accountants and noise calibration for the whole schedule (and the releases beside
DP-SGD: the noised example count, noised evaluations), Opacus wrapping, and the site's own
policy and ledger."""

from fedllm.privacy.accountants import (
    ACCOUNTANTS,
    Accountant,
    Composition,
    get_accountant,
)
from fedllm.privacy.accounting import calibrate_noise, calibrate_plan, epsilon
from fedllm.privacy.budget import check_budget, history_epsilon, spent
from fedllm.privacy.chain import LedgerEntry, LedgerState
from fedllm.privacy.engine import (
    GRAD_SAMPLE_MODES,
    DPParams,
    PrivateStep,
    choose_mode,
    make_private,
)
from fedllm.privacy.events import DPEvent, DPSchedule, merge
from fedllm.privacy.ledger import PrivacyLedger
from fedllm.privacy.policy import PrivacyRequest, SitePolicy
from fedllm.privacy.releases import ReleasePlan
from fedllm.privacy.site_report import ReportCheck, verify_site_report, write_site_report

__all__ = [
    "ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "Accountant",
    "Composition",
    "DPEvent",
    "DPParams",
    "DPSchedule",
    "LedgerEntry",
    "LedgerState",
    "PrivacyLedger",
    "PrivacyRequest",
    "PrivateStep",
    "ReleasePlan",
    "ReportCheck",
    "SitePolicy",
    "calibrate_noise",
    "calibrate_plan",
    "check_budget",
    "choose_mode",
    "epsilon",
    "get_accountant",
    "history_epsilon",
    "make_private",
    "merge",
    "spent",
    "verify_site_report",
    "write_site_report",
]
