"""A site's privacy policy: the weakest privacy it will ever train under.

The policy is a small TOML file the site owns (its path comes from the SuperNode's
node-config; in simulation one is generated per virtual site from the run config). The
server's run config may ask for stricter privacy, never weaker: every request is checked
here, and a request outside the policy is refused with the reason.

```toml
max-epsilon = 3.0            # cumulative, over every run this site ever trains in
delta = 1e-5                 # the largest delta a run may use
min-noise-multiplier = 0.5   # the smallest DP-SGD noise multiplier accepted
max-clip-norm = 1.0          # the largest per-example clipping norm accepted
accountants = ["prv", "rdp"] # accountants the site accepts (default: every registered one)
allow-non-dp = false         # train without DP at all (only for research baselines)
allow-reproducible-noise = false  # DP noise derived from the run's public seed (research only)
require-secure-aggregation = true # never send a plain update (train only over SecAgg+)
min-secagg-threshold = 2     # the fewest shares that may rebuild this site's secrets
allow-feature-statistics = false  # release per-feature count/sum/sum of squares (not DP)
max-evaluations = 0          # noised evaluations of global models one DP run may ask for
max-federation-size = 10     # the most sites this site splits client-level DP noise among
```

What a site sends under these limits is listed, field by field, in :mod:`fedllm.protocol`'s
release manifest.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedllm.errors import PolicyError
from fedllm.files import write_new
from fedllm.privacy.accountants import ACCOUNTANTS


@dataclass(frozen=True)
class PrivacyRequest:
    """What a run asks of a site: the privacy parameters from the server's run config."""

    dp: bool
    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    accountant: str
    reproducible_noise: bool = False
    secure_aggregation: bool = True  # the run aggregates over SecAgg+ (`secagg`)
    secagg_threshold: int = 0  # the run's `secagg-threshold` (0: sized per round)
    evaluations: int = 0  # noised site evaluations the run plans (DP runs)
    feature_statistics: bool = False  # the run scales features with pooled statistics
    federation_size: int = 1  # sites in the run (`num-sites`)


@dataclass(frozen=True)
class SitePolicy:
    """The site's own limits; see the module docstring for the file format."""

    max_epsilon: float
    delta: float
    min_noise_multiplier: float = 0.0
    max_clip_norm: float = math.inf
    accountants: tuple[str, ...] = tuple(ACCOUNTANTS)
    allow_non_dp: bool = False
    allow_reproducible_noise: bool = False
    require_secure_aggregation: bool = True
    min_secagg_threshold: int = 2
    allow_feature_statistics: bool = False
    max_evaluations: int = 0
    max_federation_size: int = 10

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_epsilon) and self.max_epsilon > 0):
            raise PolicyError(f"policy `max-epsilon` must be > 0, got {self.max_epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise PolicyError(f"policy `delta` must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.min_noise_multiplier) and self.min_noise_multiplier >= 0):
            raise PolicyError(
                f"policy `min-noise-multiplier` must be >= 0, got {self.min_noise_multiplier}"
            )
        if not self.max_clip_norm > 0:
            raise PolicyError(f"policy `max-clip-norm` must be > 0, got {self.max_clip_norm}")
        unknown = [a for a in self.accountants if a not in ACCOUNTANTS]
        if unknown or not self.accountants:
            raise PolicyError(
                f"policy `accountants` must be a non-empty list of {', '.join(ACCOUNTANTS)}, "
                f"got {list(self.accountants)}"
            )
        if self.min_secagg_threshold < 2:
            raise PolicyError(
                f"policy `min-secagg-threshold` must be >= 2, got {self.min_secagg_threshold}"
            )
        if not self.max_evaluations >= 0:
            raise PolicyError(f"policy `max-evaluations` must be >= 0, got {self.max_evaluations}")
        if not self.max_federation_size >= 1:
            raise PolicyError(
                f"policy `max-federation-size` must be >= 1, got {self.max_federation_size}"
            )

    @classmethod
    def from_request(cls, request: PrivacyRequest) -> SitePolicy:
        """Simulation: a virtual site whose limits are exactly what the run asks for."""
        return cls(
            max_epsilon=request.target_epsilon,
            delta=request.target_delta,
            max_clip_norm=request.max_grad_norm,
            accountants=(request.accountant,),
            allow_non_dp=not request.dp,
            allow_reproducible_noise=request.reproducible_noise,
            require_secure_aggregation=request.secure_aggregation,
            min_secagg_threshold=max(2, request.secagg_threshold),
            allow_feature_statistics=request.feature_statistics,
            max_evaluations=request.evaluations,
            max_federation_size=request.federation_size,
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "policy") -> SitePolicy:
        known = {
            "max-epsilon",
            "delta",
            "min-noise-multiplier",
            "max-clip-norm",
            "accountants",
            "allow-non-dp",
            "allow-reproducible-noise",
            "require-secure-aggregation",
            "min-secagg-threshold",
            "allow-feature-statistics",
            "max-evaluations",
            "max-federation-size",
        }
        unknown = sorted(set(values) - known)
        if unknown:
            raise PolicyError(f"{source}: unknown key(s) {', '.join(unknown)}")
        for key in ("max-epsilon", "delta"):
            if key not in values:
                raise PolicyError(f"{source}: `{key}` is required")
        try:
            accountants = values.get("accountants", list(ACCOUNTANTS))
            if isinstance(accountants, str) or not isinstance(accountants, list):
                raise PolicyError(f"{source}: `accountants` must be a list, got {accountants!r}")
            allow = _flag(values, "allow-non-dp", source)
            return cls(
                max_epsilon=_number(values, "max-epsilon", source),
                delta=_number(values, "delta", source),
                min_noise_multiplier=_number(values, "min-noise-multiplier", source, 0.0),
                max_clip_norm=_number(values, "max-clip-norm", source, math.inf),
                accountants=tuple(str(a) for a in accountants),
                allow_non_dp=allow,
                allow_reproducible_noise=_flag(values, "allow-reproducible-noise", source),
                require_secure_aggregation=_flag(
                    values, "require-secure-aggregation", source, default=True
                ),
                min_secagg_threshold=_count(values, "min-secagg-threshold", source, 2),
                allow_feature_statistics=_flag(values, "allow-feature-statistics", source),
                max_evaluations=_count(values, "max-evaluations", source, 0),
                max_federation_size=_count(values, "max-federation-size", source, 10),
            )
        except PolicyError as err:
            message = str(err)
            raise PolicyError(
                message if message.startswith(source) else f"{source}: {message}"
            ) from None

    @classmethod
    def load(cls, path: Path) -> SitePolicy:
        if not path.is_file():
            raise PolicyError(f"site policy {path} does not exist")
        try:
            values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise PolicyError(f"site policy {path} is not valid TOML: {err}") from None
        return cls.from_mapping(values, f"site policy {path}")

    def to_toml(self) -> str:
        lines = [
            "# fedllm site privacy policy: the weakest privacy this site trains under.",
            f"max-epsilon = {self.max_epsilon!r}",
            f"delta = {self.delta!r}",
            f"min-noise-multiplier = {self.min_noise_multiplier!r}",
        ]
        if math.isfinite(self.max_clip_norm):
            lines.append(f"max-clip-norm = {self.max_clip_norm!r}")
        lines.append("accountants = [" + ", ".join(f'"{a}"' for a in self.accountants) + "]")
        lines.append(f"allow-non-dp = {'true' if self.allow_non_dp else 'false'}")
        if self.allow_reproducible_noise:
            lines.append("allow-reproducible-noise = true")
        lines.append(
            "require-secure-aggregation = "
            + ("true" if self.require_secure_aggregation else "false")
        )
        lines.append(f"min-secagg-threshold = {self.min_secagg_threshold}")
        lines += [
            "# Per-feature count, sum and sum of squares for federated scaling: outside DP.",
            f"allow-feature-statistics = {'true' if self.allow_feature_statistics else 'false'}",
            "# Noised evaluations of global models one DP run may ask for (each in the epsilon).",
            f"max-evaluations = {self.max_evaluations}",
            "# Client-level DP: the most sites this site splits its noise among.",
            f"max-federation-size = {self.max_federation_size}",
        ]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Create the policy file; an existing policy is the site's own and never replaced."""
        write_new(path, self.to_toml().encode(), 0o644, PolicyError, "site policy")

    def check(self, request: PrivacyRequest) -> None:
        """Refuses, naming the reason, a request for weaker privacy than this policy allows."""
        if not request.dp:
            if not self.allow_non_dp:
                raise PolicyError("the run asks to train without DP; the site policy forbids it")
            return
        if request.reproducible_noise and not self.allow_reproducible_noise:
            raise PolicyError(
                "the run asks for reproducible-noise (DP noise derived from the run's public "
                "seed, which the coordinator could regenerate); the site policy forbids it"
            )
        problems = []
        if request.target_epsilon > self.max_epsilon:
            problems.append(
                f"target-epsilon {request.target_epsilon} is above the site's "
                f"max-epsilon {self.max_epsilon}"
            )
        if request.target_delta > self.delta:
            problems.append(
                f"target-delta {request.target_delta} is above the site's delta {self.delta}"
            )
        if request.max_grad_norm > self.max_clip_norm:
            problems.append(
                f"max-grad-norm {request.max_grad_norm} is above the site's "
                f"max-clip-norm {self.max_clip_norm}"
            )
        if request.accountant not in self.accountants:
            problems.append(
                f"accountant {request.accountant!r} is not one the site accepts "
                f"({', '.join(self.accountants)})"
            )
        if request.evaluations > self.max_evaluations:
            problems.append(
                f"the run plans {request.evaluations} evaluation(s) at the site, above the "
                f"site's max-evaluations {self.max_evaluations}"
            )
        if problems:
            raise PolicyError(
                "the run asks for weaker privacy than the site allows: " + "; ".join(problems)
            )

    def check_noise(self, noise_multiplier: float) -> None:
        if noise_multiplier < self.min_noise_multiplier:
            raise PolicyError(
                f"the run's schedule needs noise multiplier {noise_multiplier:.4f}, below the "
                f"site's min-noise-multiplier {self.min_noise_multiplier}"
            )

    def check_evaluation(self, done: int) -> None:
        """Refuses one more noised evaluation after ``done`` in this run past max-evaluations."""
        if done >= self.max_evaluations:
            raise PolicyError(
                f"the server asks for an evaluation of a global model at the site; the site's "
                f"policy allows {self.max_evaluations} per run (max-evaluations) and this run "
                f"had {done}"
            )

    def check_feature_statistics(self) -> None:
        if not self.allow_feature_statistics:
            raise PolicyError(
                "the server asks for per-feature statistics (count, sum, sum of squares of the "
                "site's rows), which are not DP; the site policy does not allow them "
                "(allow-feature-statistics)"
            )

    def check_federation(self, sampled: int) -> None:
        """Client-level DP: refuses a claim of more sites sharing the noise than the policy
        accepts (a server that inflates it would have every site add too little)."""
        if sampled > self.max_federation_size:
            raise PolicyError(
                f"the server says {sampled} sites share the client-level noise; the site's "
                f"policy accepts at most {self.max_federation_size} (max-federation-size)"
            )


def _flag(values: Mapping[str, Any], key: str, source: str, default: bool = False) -> bool:
    value = values.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"{source}: `{key}` must be true or false, got {value!r}")
    return value


def _count(values: Mapping[str, Any], key: str, source: str, default: int) -> int:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{source}: `{key}` must be a whole number, got {value!r}")
    return value


def _number(
    values: Mapping[str, Any], key: str, source: str, default: float | None = None
) -> float:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{source}: `{key}` must be a number, got {value!r}")
    return float(value)
