"""A site's side of client-level DP: clip its whole update and add its share of the noise
before the update is masked (or sent, without secure aggregation).

The noise multiplier comes from the site's own run config (calibrated here, as the server
does, and cached in ``context.state``). What the site divides the noise among is what it knows
holds: with secure aggregation, the threshold of its own key sharing (no sum of fewer sites
can be unmasked), without it one (the server sees each update). The number of sites the server
says it sampled (``m``) is checked against the site's policy (`max-federation-size`) and the
run config, and never lowers the noise; a site takes part in at most `num-server-rounds`
rounds of a run, the rounds its noise is calibrated for."""

from __future__ import annotations

from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.logger import log

from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.errors import PrivacyError
from fedllm.privacy import SitePolicy
from fedllm.privacy.client_dp import calibrate_client_noise, privatize_update, site_noise_std
from fedllm.secagg import Layout, state_from_config


@dataclass(frozen=True)
class SiteNoise:
    """This round's clipping bound and per-value noise std at this site."""

    clip: float
    std: float
    sampled: int  # the server's claim, checked
    guaranteed: int = 1  # the fewest sites a released sum holds: what the noise is split by


def site_level_noise_multiplier(cfg: RunConfig, state: RecordDict) -> float:
    """The client-level DP noise multiplier z of the released sums for the run's planned
    rounds at its client-epsilon, calibrated once per run and cached in the site's state."""
    key = f"{cfg.client_epsilon!r}|{cfg.client_delta!r}|{cfg.num_server_rounds}|{cfg.accountant}"
    cached = state.config_records.get(proto.STATE_CLIENT_CALIBRATION)
    if cached is not None and cached["key"] == key:
        return float(cached["noise-multiplier"])  # type: ignore[arg-type]
    z = calibrate_client_noise(
        cfg.client_epsilon, cfg.client_delta, cfg.num_server_rounds, cfg.accountant
    )
    state[proto.STATE_CLIENT_CALIBRATION] = ConfigRecord({"key": key, "noise-multiplier": z})
    return z


def site_noise(
    cfg: RunConfig,
    config: ConfigRecord,
    state: RecordDict,
    policy: SitePolicy,
    server_round: int,
    rounds_done: int,
) -> SiteNoise:
    """Checked before training: the server must say how many sites it sampled, no more than
    the run config's federation and the site's policy accept; the site has not yet taken part
    in all the rounds its noise is calibrated for (``rounds_done``: its trainings in this run).
    The noise is split by what the site itself knows bounds a released sum from below:
    :func:`guaranteed_sites`."""
    if proto.CLIENT_DP_SAMPLED not in config:
        raise PrivacyError(
            "client-dp is on but the server's train message does not say how many sites were "
            f"sampled (`{proto.CLIENT_DP_SAMPLED}`): refusing to send an update without its noise"
        )
    sampled = int(config[proto.CLIENT_DP_SAMPLED])  # type: ignore[arg-type]
    if not 1 <= sampled <= cfg.num_sites:
        raise PrivacyError(
            f"the server says {sampled} sites share the client-level noise; it must be in "
            f"1..{cfg.num_sites} (`num-sites`)"
        )
    policy.check_federation(sampled)
    if rounds_done >= cfg.num_server_rounds:
        raise PrivacyError(
            f"client-dp: this site already took part in {rounds_done} rounds of this run, the "
            f"{cfg.num_server_rounds} (`num-server-rounds`) its site-level noise is calibrated for"
        )
    guaranteed = guaranteed_sites(state, sampled, cfg.secagg, server_round)
    z = site_level_noise_multiplier(cfg, state)
    return SiteNoise(
        cfg.client_clip, site_noise_std(z, cfg.client_clip, guaranteed), sampled, guaranteed
    )


def guaranteed_sites(state: RecordDict, sampled: int, secure: bool, server_round: int) -> int:
    """The fewest sites whose noise any sum the server can release holds: the threshold of
    this round's key sharing (read from the site's own secure-aggregation state), capped by the
    sampled count; 1 without secure aggregation."""
    if not secure:
        return 1
    shared = None
    # This round's keys were shared in its own key-sharing stage, or ahead (during the
    # previous round's unmask stage): the train message masks with whichever is this round's.
    for key in (proto.STATE_SECAGG_NEXT, proto.STATE_SECAGG):
        record = state.config_records.get(key)
        if record is not None and record["server-round"] == server_round:
            shared = state_from_config(dict(record))
            break
    if shared is None or shared.threshold < 1:
        raise PrivacyError(
            f"client-dp with secure aggregation: no key sharing for round {server_round}, so "
            "nothing bounds how few sites' noise a released sum holds"
        )
    return min(shared.threshold, sampled)


def privatize(
    global_arrays: ArrayRecord,
    update: ArrayRecord,
    noise: SiteNoise,
    metrics: MetricRecord,
    secagg_clip_range: float | None,
) -> ArrayRecord:
    """The local model as global + clip(local - global) + noise; records the equal weight."""
    layout = Layout.of(global_arrays)
    base = layout.flatten(global_arrays)  # (P,)
    # The noise must be unpredictable to the server: fresh OS entropy, not the run's seed.
    noised = privatize_update(
        layout.flatten(update) - base, noise.clip, noise.std, np.random.default_rng()
    )
    if secagg_clip_range is not None and float(np.abs(noised).max()) > secagg_clip_range:
        log(
            WARNING,
            "client-dp: a noised update value exceeds secagg-clip-range %s and is clipped "
            "(the sum's noise is then not exactly Gaussian): raise secagg-clip-range",
            secagg_clip_range,
        )
    metrics[proto.CLIENT_DP_WEIGHT] = 1
    return layout.unflatten(base + noised)
