"""Privacy: noise calibration for the whole schedule, accounting, Opacus wrapping."""

from fedllm.privacy.accounting import (
    ACCOUNTANTS,
    DPEvent,
    DPSchedule,
    calibrate_noise,
    epsilon,
    merge,
)
from fedllm.privacy.engine import DPParams, PrivateRound, make_private
from fedllm.privacy.spend import PrivacySpend

__all__ = [
    "ACCOUNTANTS",
    "DPEvent",
    "DPParams",
    "DPSchedule",
    "PrivacySpend",
    "PrivateRound",
    "calibrate_noise",
    "epsilon",
    "make_private",
    "merge",
]
