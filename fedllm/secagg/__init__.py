"""Secure aggregation (SecAgg+) for the message API: the site's and the coordinator's sides of
the protocol, and the masked integer vector a site's weighted update travels as."""

from fedllm.secagg.coordinator import SecAggRound, SecAggSettings
from fedllm.secagg.site import (
    MASK,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    SiteSecAgg,
    state_from_config,
    state_to_config,
)
from fedllm.secagg.vector import Layout, average_delta, prg, quantize, weighted_vector

__all__ = [
    "MASK",
    "SETUP",
    "SHARE_KEYS",
    "UNMASK",
    "Layout",
    "SecAggRound",
    "SecAggSettings",
    "SiteSecAgg",
    "average_delta",
    "prg",
    "quantize",
    "state_from_config",
    "state_to_config",
    "weighted_vector",
]
