"""A site's side of client-level DP: clip its whole update and add its share of the noise
before the update is masked (or sent, without secure aggregation).

The noise multiplier comes from the site's own run config (calibrated here, as the server
does, and cached in ``context.state``); only the number of sites sampled this round comes from
the server, which splits the noise among them (each adds ``1/sqrt(m)`` of it)."""

from __future__ import annotations

from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.logger import log

from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.errors import PrivacyError
from fedllm.privacy.client_dp import calibrate_client_noise, privatize_update, site_noise_std
from fedllm.secagg import Layout


@dataclass(frozen=True)
class SiteNoise:
    """This round's clipping bound and per-value noise std at this site."""

    clip: float
    std: float
    sampled: int


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


def site_noise(cfg: RunConfig, config: ConfigRecord, state: RecordDict) -> SiteNoise:
    """Checked before training: the server must say how many sites share the noise, and no
    more than the federation holds (each site's share would be too small)."""
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
    z = site_level_noise_multiplier(cfg, state)
    return SiteNoise(cfg.client_clip, site_noise_std(z, cfg.client_clip, sampled), sampled)


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
