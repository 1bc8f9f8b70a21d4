"""Site-level (client) DP at the server: the noise calibrated for the planned rounds, a stop
before a round that would pass the budget, and each released sum accounted at the noise it
actually carried. Each site splits its noise by the fewest sites a released sum can hold (the
secure-aggregation threshold; 1 without it), so a sum carries at least the planned noise:
dropouts down to the threshold add noise, never remove it."""

from __future__ import annotations

from logging import INFO

from flwr.app import ConfigRecord
from flwr.common.logger import log

from fedllm import protocol as proto
from fedllm.config import RunConfig
from fedllm.errors import ConfigError, FedLLMError
from fedllm.privacy.client_dp import ClientDPAccountant, clip_range_needed, site_noise_std
from fedllm.secagg import SecAggSettings
from server.round_log import ClientDPRound, Refusal


class SiteLevelBudgetSpent(FedLLMError):
    """The next round would take the site-level (client) epsilon past `client-epsilon`."""

    def __init__(self, server_round: int, spent: float, after: float, target: float) -> None:
        self.server_round = server_round
        self.refusals: dict[str, Refusal] = {}  # no site refused: the run's budget did
        super().__init__(
            f"round {server_round} would take the site-level epsilon from {spent:.4f} to "
            f"{after:.4f}, above `client-epsilon` {target}"
        )


class ClientLevelDP:
    """The run's site-level accountant, stepped once per released sum."""

    def __init__(
        self, accountant: ClientDPAccountant, secagg: SecAggSettings | None = None
    ) -> None:
        self.accountant = accountant
        self.secagg = secagg  # None: no secure aggregation, each update seen alone
        self._sampled: dict[int, tuple[int, int]] = {}  # round -> (sampled, guaranteed)

    @classmethod
    def for_run(cls, cfg: RunConfig) -> ClientLevelDP | None:
        """None without `client-dp`. Refuses a secure-aggregation clip range that would cut
        into a site's clipped, noised update."""
        if not cfg.client_dp:
            return None
        dp = ClientDPAccountant.calibrated(
            cfg.client_epsilon,
            cfg.client_delta,
            cfg.client_clip,
            cfg.num_server_rounds,
            cfg.accountant,
        )
        planned = max(int(cfg.num_sites * cfg.fraction_train), 2 if cfg.secagg else 1)
        secagg = SecAggSettings(cfg.secagg_shares, cfg.secagg_threshold) if cfg.secagg else None
        std = site_noise_std(dp.noise_multiplier, cfg.client_clip, _guaranteed(secagg, planned))
        needed = clip_range_needed(cfg.client_clip, std)
        if cfg.secagg and cfg.secagg_clip_range < needed:
            raise ConfigError(
                f"`secagg-clip-range` ({cfg.secagg_clip_range}) does not cover a site's clipped, "
                f"noised update (client-clip {cfg.client_clip} + 8 x noise std {std:.4g} with "
                f"{planned} sampled sites): set it to at least {needed:.4g}"
            )
        log(
            INFO,
            "fedllm: client-level DP on: target epsilon %s at delta %g per site over %d rounds, "
            "clip %s, noise multiplier %.4f (%s accountant; each of %d sampled sites adds "
            "std %.4g, enough for any sum the %s allows)",
            cfg.client_epsilon,
            cfg.client_delta,
            cfg.num_server_rounds,
            cfg.client_clip,
            dp.noise_multiplier,
            cfg.accountant,
            planned,
            std,
            "secure-aggregation threshold" if secagg else "server, which sees each update,",
        )
        return cls(dp, secagg)

    def before_round(self, server_round: int) -> None:
        """Raise :class:`SiteLevelBudgetSpent` when a full round would pass the budget."""
        dp = self.accountant
        after = dp.epsilon_after_full_round()
        if after > dp.target_epsilon:
            raise SiteLevelBudgetSpent(server_round, dp.epsilon, after, dp.target_epsilon)

    def sampled(
        self, server_round: int, count: int, config: ConfigRecord, keyed_from: int | None = None
    ) -> None:
        """Tell the ``count`` sites that get a train message (one shared config record) how
        many they are (each checks it against its policy). ``keyed_from``: how many were
        sampled for the round's key sharing, which fixed its threshold (default ``count``);
        each site splits its noise by that threshold, at most ``count``."""
        config[proto.CLIENT_DP_SAMPLED] = count
        threshold = _guaranteed(self.secagg, keyed_from or count)
        self._sampled[server_round] = (count, min(threshold, count))

    def released(self, server_round: int, summed: int) -> ClientDPRound:
        """Step the accountant for a sum of ``summed`` sites the server saw (0: nothing was
        released, nothing spent) and return the round's figures."""
        dp = self.accountant
        sampled, guaranteed = self._sampled.get(server_round, (0, 1))
        z = dp.record(summed, guaranteed) if summed > 0 else None
        log(
            INFO,
            "client-dp: round %d, sum of %d of %d sampled sites at noise multiplier %s: "
            "site-level epsilon %.4f (target %s, delta %g)",
            server_round,
            summed,
            sampled,
            "-" if z is None else f"{z:.4f}",
            dp.epsilon,
            dp.target_epsilon,
            dp.delta,
        )
        return ClientDPRound(dp.epsilon, z, dp.clip, summed, sampled)

    def unchanged(self) -> ClientDPRound:
        """The figures of a round that released no sum."""
        return ClientDPRound(self.accountant.epsilon)


def _guaranteed(secagg: SecAggSettings | None, sampled: int) -> int:
    """The fewest sites any released sum of ``sampled`` holds: the threshold, or 1 in the clear."""
    if secagg is None or sampled < 2:
        return 1
    return secagg.for_round(sampled)[1]
