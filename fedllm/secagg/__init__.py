"""Secure aggregation (SecAgg+, hardened for a malicious coordinator) for the message API: the
site's and the coordinator's sides of the protocol, the signed round keys and the roster of
trusted sites, the neighbourhood sizing, and the masked integer vector a site's weighted update
travels as."""

from fedllm.secagg.coordinator import SecAggRound, SecAggSettings
from fedllm.secagg.identity import (
    ROSTER_FILE,
    Roster,
    SignedKeys,
    keys_statement,
    publish_public_key,
    survivors_statement,
)
from fedllm.secagg.shamir import combine_many, combine_secret, split_secret, split_secrets
from fedllm.secagg.site import (
    MASK,
    REVEAL,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    SiteSecAgg,
    UnmaskAnswer,
    state_from_config,
    state_round,
    state_to_config,
)
from fedllm.secagg.sizing import majority, neighbourhood
from fedllm.secagg.vector import (
    Layout,
    Ring,
    average_delta,
    clipped_fraction,
    prg,
    quantize,
    weighted_update,
    weighted_vector,
)

__all__ = [
    "MASK",
    "REVEAL",
    "ROSTER_FILE",
    "SETUP",
    "SHARE_KEYS",
    "UNMASK",
    "Layout",
    "Ring",
    "Roster",
    "SecAggRound",
    "SecAggSettings",
    "SignedKeys",
    "SiteSecAgg",
    "UnmaskAnswer",
    "average_delta",
    "clipped_fraction",
    "combine_many",
    "combine_secret",
    "keys_statement",
    "majority",
    "neighbourhood",
    "prg",
    "publish_public_key",
    "quantize",
    "split_secret",
    "split_secrets",
    "state_from_config",
    "state_round",
    "state_to_config",
    "survivors_statement",
    "weighted_update",
    "weighted_vector",
]
